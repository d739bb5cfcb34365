"""The validation table of the CNN/DailyMail runs (bench/cnndm_cpu.sh): ROUGE-1/2/Lsum F1 with 95%
bootstrap intervals of every evaluated system on the same documents, for the first N validation
documents of each size given (systems evaluated on fewer are left out of that block).

    python bench/cnndm_table.py runs/cnndm/eval --first 200 2000 0 > bench/results/cnndm/validation.md

``0`` means the whole split. Reads ``<EVAL>/<name>/<system>.predictions.jsonl`` (per-document
ROUGE written by ``attnsum evaluate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from common import ROOT  # noqa: F401  (the checkout on the import path)

from attnsum.evaluate import BASELINES, METRICS, bootstrap


def per_document(folder: Path) -> dict[str, list[list[float]]]:
    """system name -> per-document [R-1, R-2, R-Lsum] in file order."""
    out = {}
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        for pred in sorted(run.glob("*.predictions.jsonl")):
            system = pred.name.removesuffix(".predictions.jsonl")
            name = run.name if system == "model" else system
            rows = [json.loads(line) for line in pred.open(encoding="utf-8")]
            out[name] = [[r[m] for m in METRICS] for r in rows]
    baselines = [b for b in BASELINES if b in out]
    return {name: out[name] for name in baselines + sorted(set(out) - set(baselines))}


def table(systems: dict[str, list[list[float]]], first: int) -> str:
    n = first or max(len(v) for v in systems.values())
    lines = [f"First {n} validation documents:" if first else f"Whole validation split ({n}):", "",
             "| system | ROUGE-1 | ROUGE-2 | ROUGE-Lsum |", "|---|---|---|---|"]
    for name, rows in systems.items():
        if len(rows) < n:
            continue
        s = bootstrap(np.asarray(rows[:n], dtype=np.float64))
        lines.append(f"| {name} | " + " | ".join(str(s[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("eval_dir")
    p.add_argument("--first", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    systems = per_document(Path(args.eval_dir))
    if not systems:
        raise SystemExit(f"{args.eval_dir}: no *.predictions.jsonl below it")
    print("\n\n".join(table(systems, n) for n in args.first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
