#!/usr/bin/env bash
# The CPU budget runs on CNN/DailyMail (../shared/data/cnndm): the MiniLM teacher and two
# student-mini twins (dense, `paper` plan) on the same 4,000 training documents, 500 steps of 8,
# default schedules (schedule.py) and precision (precision.py); then ROUGE on the whole
# validation split. Every step resumes: a finished run or evaluation is skipped, a training run
# continues from its last checkpoint. Run it in the background:
#   nohup bash bench/cnndm_cpu.sh > runs/cnndm/log.txt 2>&1 &
# Environment: DATA (default ../shared/data/cnndm), OUT (default runs/cnndm), ATTNSUM (default
# "python -m attnsum").
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cnndm}
OUT=${OUT:-runs/cnndm}
ATTNSUM=${ATTNSUM:-python -m attnsum}
mkdir -p "$OUT"
common=(--dataset "$DATA" --limit 4000 --val-limit 200 --max-len 512 --steps 500 --batch-size 8
        --val-every 125)

train() {  # name, then train flags
  local name=$1; shift
  if [ -f "$OUT/$name/done" ]; then echo "== $name: trained earlier"; return; fi
  echo "== train $name ($(date -u +%H:%M:%S))"
  $ATTNSUM train "${common[@]}" --out "$OUT/$name" "$@"
  touch "$OUT/$name/done"
}

evaluate() {  # name, then evaluate flags
  local name=$1; shift
  if [ -f "$OUT/eval/$name/done" ]; then echo "== $name: evaluated earlier"; return; fi
  echo "== evaluate $name on validation ($(date -u +%H:%M:%S))"
  $ATTNSUM evaluate --dataset "$DATA" --split val --max-len 512 --out "$OUT/eval/$name" "$@"
  touch "$OUT/eval/$name/done"
}

evaluate lead3 --system lead3,oracle
train cpu-teacher --preset minilm
evaluate cpu-teacher --system "" --checkpoint "$OUT/cpu-teacher"
train cpu-student --preset student-mini
train cpu-student-paper --preset student-mini --plan paper
evaluate cpu-student --system "" --checkpoint "$OUT/cpu-student"
evaluate cpu-student-paper --system "" --checkpoint "$OUT/cpu-student-paper"
echo "== done ($(date -u +%H:%M:%S))"
