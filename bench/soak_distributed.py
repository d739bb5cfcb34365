"""The distributed commands many times in a row: a flake that shows once in a few runs (an abort
at exit, a hang) shows here, outside the default suite's time.

    python bench/soak_distributed.py --runs 20 --out bench/results/cpu-<cpu>/soak-distributed.json

Each round runs what tests/test_distributed.py runs under torchrun (2 processes, gloo, CPU):
training a tiny model for 6 steps, and summarizing 7 documents, then checks that both exit 0
with nothing of an abort in their output ("terminate called", "Aborted", a signal), that the
two-process summaries equal one process's, and the round's seconds. The JSON holds every
round's outcome; the exit code is 1 if any round failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TRAIN = ["train", "--preset", "tiny", "--limit", "8", "--max-len", "96", "--steps", "6",
         "--val-every", "2", "--log-every", "1", "--dropout", "0", "--precision", "fp32",
         "--batch-size", "2"]
ABORT_SIGNS = ("terminate called", "Aborted", "Signal", "SIGABRT", "core dumped")


def _run(cmd: list[str], timeout: float) -> tuple[int, str, float]:
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        return 124, f"timed out after {timeout:.0f} s: {e}", time.time() - t0


def _summaries(path: Path) -> list[tuple]:
    return [(r["id"], tuple(r.get("summary", ()))) for r in map(json.loads, path.open())]


def soak(runs: int, work: Path, timeout: float) -> list[dict]:
    docs = work / "docs.jsonl"
    sys.path.insert(0, str(ROOT))
    from attnsum.data import load_corpus

    docs.write_text("".join(json.dumps({"id": d.id, "text": " ".join(d.sentences)}) + "\n"
                            for d in load_corpus("embedded", "val", limit=7).documents))
    rc, log, _ = _run([sys.executable, "-m", "attnsum", *TRAIN, "--out", str(work / "one")],
                      timeout)
    if rc != 0:
        raise SystemExit(f"the single-process run failed:\n{log[-3000:]}")
    summarize = ["-m", "attnsum", "summarize", "--checkpoint", str(work / "one"), str(docs)]
    rc, log, _ = _run([sys.executable, *summarize, "--out", str(work / "one.jsonl")], timeout)
    if rc != 0:
        raise SystemExit(f"single-process summarize failed:\n{log[-3000:]}")
    want = _summaries(work / "one.jsonl")
    rounds = []
    for i in range(runs):
        row = {"round": i + 1}
        for name, cmd in (("train", [*TORCHRUN, "-m", "attnsum", *TRAIN, "--out",
                                     str(work / f"two-{i}")]),
                          ("summarize", [*TORCHRUN, *summarize, "--chunk", "2", "--out",
                                         str(work / f"two-{i}.jsonl")])):
            rc, log, seconds = _run(cmd, timeout)
            signs = [s for s in ABORT_SIGNS if s in log]
            ok = rc == 0 and not signs
            if ok and name == "summarize":
                ok = _summaries(work / f"two-{i}.jsonl") == want
            row[name] = {"rc": rc, "ok": ok, "seconds": round(seconds, 1), "abort_signs": signs,
                         **({} if ok else {"log_tail": log[-1500:]})}
        rounds.append(row)
        print(f"round {i + 1}: train {'ok' if row['train']['ok'] else 'FAILED'} "
              f"({row['train']['seconds']} s), summarize "
              f"{'ok' if row['summarize']['ok'] else 'FAILED'} ({row['summarize']['seconds']} s)",
              flush=True)
    return rounds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300, help="seconds per command")
    p.add_argument("--out", default=None, help="JSON file of every round's outcome")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rounds = soak(args.runs, Path(work), args.timeout)
    passed = sum(r["train"]["ok"] and r["summarize"]["ok"] for r in rounds)
    print(f"{passed} of {len(rounds)} rounds passed (train and summarize under torchrun, 2 "
          "processes)")
    if args.out:
        sys.path.insert(0, str(ROOT))
        from attnsum.io import atomic_write_json
        from attnsum.release import source_commit

        atomic_write_json(args.out, {"command": " ".join(sys.argv), "commit": source_commit(),
                                     "passed": passed, "runs": len(rounds), "rounds": rounds})
    return 0 if passed == len(rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
