#!/usr/bin/env bash
# The released news model (attnsum/models/$NAME) and its dense twin, on CPU, from the shared
# CNN/DailyMail files: a 3-layer student of MiniLM's width started from the pretrained MiniLM's
# layers 1, 3, 5 with its word embeddings frozen (so that a release stores none of them),
# oracle labels, 8 documents a step drawn from the whole training split, peak rate LR (2e-4),
# validation ROUGE on the first 500 validation documents every 500 steps; `paper` plan for the
# release, no plan for the twin, the same budget; BERTSum's inter-sentence transformer over the
# sentence vectors (CLASSIFIER). Then: the release, the whole validation split
# (Lead-3, the release and the twin, each twin in bf16 weights as released), and blind-test
# summaries of all test articles by both.
#
# Every step resumes or is skipped when done; training stops itself after TIME_LIMIT minutes
# (exit 3) and a rerun goes on. The two trainings run side by side, one thread each.
#   nohup bash bench/cnndm_release.sh > runs/news/log.txt 2>&1 &
# Environment: DATA (../shared/data/cnndm), BLIND (../shared/data/cnndm-blind/test-articles.jsonl.gz),
# OUT (runs/news), STEPS (3000), TIME_LIMIT (minutes, none by default), NAME
# (news-paper3-tx-lr2e-4), TWIN (news-dense3-tx-lr2e-4), INIT (minilm; a released model to
# continue from, e.g. attnsum/models/news-paper3-tx-lr2e-4-sel), SEED (0; another seed draws other documents
# when continuing), CLASSIFIER (transformer, or linear), LR (peak rate, 2e-4). The defaults are
# the recipe of the released model; the earlier releases and the levers that chose these settings:
# bench/results/cnndm/levers.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cnndm}
BLIND=${BLIND:-../shared/data/cnndm-blind/test-articles.jsonl.gz}
OUT=${OUT:-runs/news}
STEPS=${STEPS:-3000}
NAME=${NAME:-news-paper3-tx-lr2e-4}
TWIN=${TWIN:-news-dense3-tx-lr2e-4}
INIT=${INIT:-minilm}
SEED=${SEED:-0}
CLASSIFIER=${CLASSIFIER:-transformer}
LR=${LR:-2e-4}
RESULTS=bench/results/cnndm
ATTNSUM=${ATTNSUM:-python -m attnsum}
mkdir -p "$OUT" "$RESULTS"

[ -d shards/cnndm/train ] || $ATTNSUM shard --dataset "$DATA" --splits train,val --max-len 512 \
  --out shards/cnndm

train() {  # run name, plan
  local name=$1 plan=$2
  if [ -f "$OUT/$name/done" ]; then echo "== $name: trained earlier"; return; fi
  local layers=(--init-layers 1,3,5)
  [ "$INIT" = minilm ] || layers=()
  OMP_NUM_THREADS=1 $ATTNSUM train --dataset shards/cnndm --preset student-mini-3 --plan "$plan" \
    --classifier "$CLASSIFIER" --init-from "$INIT" "${layers[@]}" --freeze-embeddings --lr "$LR" --batch-size 8 \
    --max-len 512 --steps "$STEPS" --val-every 500 --val-limit 500 --log-every 50 \
    --seed "$SEED" ${TIME_LIMIT:+--time-limit "$TIME_LIMIT"} --out "$OUT/$name" \
    > "$OUT/$name.log" 2>&1 && touch "$OUT/$name/done"
}

echo "== train $NAME and $TWIN ($(date -u +%H:%M:%S))"
train "$NAME" paper & a=$!
train "$TWIN" none & b=$!
wait $a || true
wait $b || true
[ -f "$OUT/$NAME/done" ] && [ -f "$OUT/$TWIN/done" ] || { echo "== training not finished: run again"; exit 3; }

[ -f "attnsum/models/$NAME/config.json" ] || $ATTNSUM release "$OUT/$NAME" --out "attnsum/models/$NAME"
[ -f "$OUT/release/$TWIN/config.json" ] || $ATTNSUM release "$OUT/$TWIN" --out "$OUT/release/$TWIN"

evaluate() {  # name, then evaluate flags
  local name=$1; shift
  if [ -f "$OUT/eval/$name/done" ]; then echo "== $name: evaluated earlier"; return; fi
  echo "== evaluate $name on the whole validation split ($(date -u +%H:%M:%S))"
  $ATTNSUM evaluate --dataset shards/cnndm --split val --max-len 512 --out "$OUT/eval/$name" "$@"
  touch "$OUT/eval/$name/done"
}
evaluate lead3 --system lead3
evaluate "$NAME" --system "" --checkpoint "attnsum/models/$NAME"
evaluate "$TWIN" --system "" --checkpoint "$OUT/release/$TWIN"
python bench/cnndm_table.py "$OUT/eval" --first 500 0 --pairs "$NAME:lead3" "$NAME:$TWIN" \
  "$TWIN:lead3" > "$RESULTS/$NAME.validation.md"

blind() {  # name, checkpoint
  local file="$RESULTS/$1.test.jsonl.gz"
  if [ -f "$file" ]; then echo "== $1: blind test summarized earlier"; return; fi
  echo "== blind test $1 ($(date -u +%H:%M:%S))"
  $ATTNSUM summarize --checkpoint "$2" "$BLIND" --field article --out "$OUT/$1.blind.jsonl"
  python bench/cnndm_blind.py convert "$OUT/$1.blind.jsonl" "$file"
}
blind "$NAME" "attnsum/models/$NAME"
blind "$TWIN" "$OUT/release/$TWIN"

# The card gains the whole-split validation table and the blind-test files.
{
  printf '## Data\n\n`shards/cnndm` is `attnsum shard --dataset %s --splits train,val --max-len 512`:\n' "$DATA"
  printf 'the %s shared CNN/DailyMail training documents (the training shard) and the %s\n' \
    "$(zcat "$DATA/train.jsonl.gz" | wc -l)" "$(zcat "$DATA/val.jsonl.gz" | wc -l)"
  printf 'validation documents; every training step draws 8 of all of them at random.\n\n'
  printf '## Validation (whole split) and blind test\n\n'
  printf 'ROUGE F1, mean [95%% bootstrap interval], beside Lead-3 and the dense twin `%s` (same\n' "$TWIN"
  printf 'recipe and budget, no plan), scored with the released bf16 weights in bf16 autocast\n'
  printf '(`python bench/cnndm_table.py %s/eval --first 500 0 --pairs ...`; the first 500 documents are\n' "$OUT"
  printf 'the ones the checkpoint was selected on):\n\n'
  cat "$RESULTS/$NAME.validation.md"
  printf '\nBlind test: all %s test articles, scored outside the project:\n' \
    "$(zcat "$RESULTS/$NAME.test.jsonl.gz" | wc -l)"
  printf '`bench/results/cnndm/%s.test.jsonl.gz`, the twin'"'"'s `bench/results/cnndm/%s.test.jsonl.gz`.\n' \
    "$NAME" "$TWIN"
} > "$OUT/$NAME.notes.md"
$ATTNSUM release "$OUT/$NAME" --out "attnsum/models/$NAME" --notes "$OUT/$NAME.notes.md"
echo "== done ($(date -u +%H:%M:%S))"
