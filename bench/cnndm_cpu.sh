#!/usr/bin/env bash
# The CPU budget runs on CNN/DailyMail (../shared/data/cnndm), sized for a 2-core CPU in one
# session: the MiniLM teacher on 4,000 training documents (500 steps of 8), then two
# student-mini twins from scratch (dense; `paper` plan) on the same first 2,000 documents with
# equal budgets (250 steps of 8), then the distilled serving students below; default schedules (schedule.py) and precision (precision.py).
# ROUGE on validation: Lead-3, oracle and the teacher on the whole split, the students on its
# first VAL_DOCS documents; blind-test summaries of the first BLIND_DOCS test articles per
# system (Lead-3: all of them). Every step resumes: a finished run, evaluation or summary file
# is skipped; a training run continues from its last checkpoint, a summary file from its last
# whole record. Run it in the background:
#   nohup bash bench/cnndm_cpu.sh > runs/cnndm/log.txt 2>&1 &
# Environment: DATA (default ../shared/data/cnndm), BLIND (default
# ../shared/data/cnndm-blind/test-articles.jsonl.gz), OUT (default runs/cnndm), RESULTS (default
# bench/results/cnndm), ATTNSUM (default "python -m attnsum"), VAL_DOCS (2000), BLIND_DOCS (1000).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cnndm}
BLIND=${BLIND:-../shared/data/cnndm-blind/test-articles.jsonl.gz}
OUT=${OUT:-runs/cnndm}
RESULTS=${RESULTS:-bench/results/cnndm}
ATTNSUM=${ATTNSUM:-python -m attnsum}
VAL_DOCS=${VAL_DOCS:-2000}
BLIND_DOCS=${BLIND_DOCS:-1000}
mkdir -p "$OUT" "$RESULTS"
common=(--dataset "$DATA" --val-limit 200 --max-len 512 --batch-size 8)
teacher=(--limit 4000 --steps 500 --val-every 125)
student=(--limit 2000 --steps 250 --val-every 125)

train() {  # name, then train flags
  local name=$1; shift
  if [ -f "$OUT/$name/done" ]; then echo "== $name: trained earlier"; return; fi
  echo "== train $name ($(date -u +%H:%M:%S))"
  $ATTNSUM train "${common[@]}" "$@" --out "$OUT/$name"
  touch "$OUT/$name/done"
}

evaluate() {  # name, then evaluate flags
  local name=$1; shift
  if [ -f "$OUT/eval/$name/done" ]; then echo "== $name: evaluated earlier"; return; fi
  echo "== evaluate $name on validation ($(date -u +%H:%M:%S))"
  $ATTNSUM evaluate --dataset "$DATA" --split val --max-len 512 --out "$OUT/eval/$name" "$@"
  touch "$OUT/eval/$name/done"
}

blind() {  # name: summaries of the first BLIND_DOCS test articles
  local name=$1 file="$RESULTS/$1.test.jsonl.gz"
  if [ -f "$file" ]; then echo "== $name: blind test summarized earlier"; return; fi
  echo "== blind test $name ($(date -u +%H:%M:%S))"
  $ATTNSUM summarize --checkpoint "$OUT/$name" "$BLIND" --field article --limit "$BLIND_DOCS" \
    --out "$OUT/$name.blind.jsonl"
  python bench/cnndm_blind.py convert "$OUT/$name.blind.jsonl" "$file"
}

[ -f "$RESULTS/lead3.test.jsonl.gz" ] || python bench/cnndm_blind.py lead3 "$BLIND" "$RESULTS/lead3.test.jsonl.gz"
evaluate lead3 --system lead3,oracle
train cpu-teacher --preset minilm "${teacher[@]}"
evaluate cpu-teacher --system "" --checkpoint "$OUT/cpu-teacher"
blind cpu-teacher
train cpu-student --preset student-mini "${student[@]}"
train cpu-student-paper --preset student-mini --plan paper "${student[@]}"
evaluate cpu-student --system "" --checkpoint "$OUT/cpu-student" --limit "$VAL_DOCS"
evaluate cpu-student-paper --system "" --checkpoint "$OUT/cpu-student-paper" --limit "$VAL_DOCS"
blind cpu-student-paper
blind cpu-student
# Serving students smaller than the teacher, distilled from it on its 4,000 documents
# (300 steps of 8): 3 layers started from the teacher's layers 1, 3, 5 (paper plan; its dense
# twin), 2 layers from layers 2, 5 (paper plan), and 3 layers from scratch (paper plan).
distil=(--limit 4000 --steps 300 --val-every 150 --teacher "$OUT/cpu-teacher")
from_teacher=(--init-from "$OUT/cpu-teacher" --lr 1e-4)
train distil3-paper --preset student-mini-3 --plan paper "${distil[@]}" "${from_teacher[@]}"
train distil3-dense --preset student-mini-3 "${distil[@]}" "${from_teacher[@]}"
evaluate distil3-paper --system "" --checkpoint "$OUT/distil3-paper" --limit "$VAL_DOCS"
evaluate distil3-dense --system "" --checkpoint "$OUT/distil3-dense" --limit "$VAL_DOCS"
train distil2-paper --preset student-mini-2 --plan paper "${distil[@]}" "${from_teacher[@]}"
evaluate distil2-paper --system "" --checkpoint "$OUT/distil2-paper" --limit "$VAL_DOCS"
train distil3-paper-scratch --preset student-mini-3 --plan paper "${distil[@]}"
evaluate distil3-paper-scratch --system "" --checkpoint "$OUT/distil3-paper-scratch" --limit "$VAL_DOCS"
blind distil3-paper
echo "== done ($(date -u +%H:%M:%S))"
