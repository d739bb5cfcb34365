#!/usr/bin/env bash
# The CNN/DailyMail recipe for a lent GPU (no datasets, tokenizer package, rouge-score or network
# there; calls of at most 10 minutes, 64 MiB carried, 8 files back), in three stages:
#
#   bash bench/cnndm_gpu.sh prepare    # here, once: shards/cnndm-512, shards/cnndm-1024 (train,
#                                      # val), shards/minilm (bf16 encoder, 44 MiB)
#   bash bench/cnndm_gpu.sh gpu        # there, call after call: carry shards/ (the encoder and
#                                      # the data may travel in separate calls); each call goes on
#                                      # with the first unfinished step, stops by itself before
#                                      # 9 minutes, and packs $OUT/cnndm-gpu.tar.gz
#   bash bench/cnndm_gpu.sh evaluate   # here: selection, trigram blocking and ROUGE of the
#                                      # validation scores that came back
#
# Runs: the MiniLM teacher (512 tokens, the whole train split read once: 1 epoch; sentences read
# as the mean of their word pieces, since MiniLM's [CLS] vectors of one document are all alike:
# bench/results/cnndm/levers.md, "Mean-pooled sentence vectors"), its analysis
# on validation (report, suggested plan), student-mini from scratch with equal budgets: dense,
# `paper`, the suggested plan, `paper` distilled from the teacher, and `paper` at 1,024 tokens.
# Checkpoints are ranked by validation loss (train --val-metric loss); every run ends with the
# sentence scores of the validation split (attnsum score). bf16 autocast on the GPU.
# REHEARSE=1 runs the same steps on CPU at tiny scale (the embedded corpus, 64 tokens, 2 steps):
# tests/test_bench.py does, so that no device minute goes to a mistake a CPU could catch.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."
ATTNSUM=${ATTNSUM:-python -m attnsum}
SHARDS=${SHARDS:-shards}
RUNS=${RUNS:-runs/cnndm-gpu}
OUT=${OUT:-$RUNS/out}
if [ "${REHEARSE:-0}" = 1 ]; then
  DATA=embedded; LIMIT=(--limit 8); LEN=64; LONG=96; BATCH=2; TEACHER_STEPS=2; STEPS=2
  PRECISION=fp32; MINUTES=${MINUTES:-8}
else
  DATA=${DATA:-../shared/data/cnndm}; LIMIT=(); LEN=512; LONG=1024; BATCH=32
  TEACHER_STEPS=1224  # 39,160 training documents / 32: one epoch
  STEPS=${STEPS:-3000}; PRECISION=bf16; MINUTES=${MINUTES:-8}
fi
START=$(date +%s)

left() {  # minutes left of this call's budget
  echo $(( MINUTES - ($(date +%s) - START) / 60 ))
}

train() {  # name, shards, then train flags: runs until done or the call's time is up
  local name=$1 data=$2; shift 2
  [ -f "$RUNS/$name/done" ] && return 0
  local budget; budget=$(left)
  if [ "$budget" -lt 1 ]; then echo "== out of time before $name"; return 3; fi
  echo "== train $name ($budget min left)"
  local rc=0
  $ATTNSUM train --dataset "$data" "${LIMIT[@]}" --val-metric loss --precision "$PRECISION" \
    --batch-size "$BATCH" --time-limit "$budget" --out "$RUNS/$name" "$@" || rc=$?
  if [ "$rc" -eq 3 ]; then return 3; fi
  [ "$rc" -eq 0 ] || return "$rc"
  $ATTNSUM score --checkpoint "$RUNS/$name" --dataset "$data" --max-len "$(max_len "$data")" \
    "${LIMIT[@]}" --precision "$PRECISION" --out "$RUNS/$name.val.scores.jsonl"
  touch "$RUNS/$name/done"
}

max_len() { python -c "import json,sys; print(json.load(open(sys.argv[1]))['max_len'])" "$1/val/meta.json"; }

pack() {
  mkdir -p "$OUT"
  tar -czf "$OUT/cnndm-gpu.tar.gz" -C "$RUNS" --exclude='*.safetensors' . 2>/dev/null || true
  echo "== packed $OUT/cnndm-gpu.tar.gz"
}

gpu() {
  mkdir -p "$RUNS"
  local d512=$SHARDS/cnndm-$LEN d1024=$SHARDS/cnndm-$LONG
  common=(--max-len "$LEN" --val-every "$((STEPS / 4 > 0 ? STEPS / 4 : 1))")
  train teacher "$d512" --preset minilm --pooling mean --steps "$TEACHER_STEPS" "${common[@]}" \
    || return $?
  if [ ! -f "$RUNS/analysis/plan.json" ]; then
    echo "== analyze the teacher"
    $ATTNSUM analyze --checkpoint "$RUNS/teacher" --dataset "$d512" --max-len "$LEN" --limit 64 \
      --out "$RUNS/analysis"
  fi
  students=(--preset student-mini --steps "$STEPS" "${common[@]}")
  train student "$d512" "${students[@]}" || return $?
  train student-paper "$d512" "${students[@]}" --plan paper || return $?
  train student-suggested "$d512" "${students[@]}" --plan "$RUNS/analysis/plan.json" || return $?
  train student-paper-distil "$d512" "${students[@]}" --plan paper --teacher "$RUNS/teacher" \
    || return $?
  train student-paper-1024 "$d1024" --preset student-mini --plan paper --steps "$STEPS" \
    --max-len "$LONG" --val-every "${common[3]}" || return $?
  echo "== every run done"
}

case "${1:-}" in
  prepare)
    $ATTNSUM shard --dataset "$DATA" "${LIMIT[@]}" --max-len "$LEN" --out "$SHARDS/cnndm-$LEN"
    $ATTNSUM shard --dataset "$DATA" "${LIMIT[@]}" --max-len "$LONG" --out "$SHARDS/cnndm-$LONG"
    [ -f "$SHARDS/minilm/config.json" ] || python bench/export_minilm.py "$SHARDS/minilm"
    ;;
  gpu)
    export ATTNSUM_MINILM=${ATTNSUM_MINILM:-$SHARDS/minilm}  # the GPU image lacks the package
    rc=0; gpu || rc=$?
    pack
    [ "$rc" -eq 3 ] && echo "== call again to go on" && exit 0
    exit "$rc"
    ;;
  evaluate)
    for scores in "$RUNS"/*.val.scores.jsonl; do
      name=$(basename "$scores" .val.scores.jsonl)
      len=$LEN; [[ "$name" == *-1024 ]] && len=$LONG
      $ATTNSUM evaluate --system "" --dataset "$DATA" --split val "${LIMIT[@]}" --max-len "$len" \
        --scores "$scores" --out "$RUNS/eval/$name"
    done
    ;;
  all)  # the rehearsal: every stage in a row
    bash "$SELF" prepare && bash "$SELF" gpu && bash "$SELF" evaluate
    ;;
  *)
    echo "usage: bash bench/cnndm_gpu.sh prepare|gpu|evaluate|all" >&2; exit 2
    ;;
esac
