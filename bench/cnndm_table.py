"""The validation table of the CNN/DailyMail runs (bench/cnndm_cpu.sh): ROUGE-1/2/Lsum F1 with 95%
bootstrap intervals of every evaluated system on the same documents, for the first N validation
documents of each size given (systems evaluated on fewer are left out of that block).

    python bench/cnndm_table.py runs/cnndm/eval --first 200 2000 0 > bench/results/cnndm/validation.md
    python bench/cnndm_table.py runs/news/eval runs/news-tx/eval --first 0 \
        --pairs news-paper3:lead3 news-paper3-tx:news-paper3

``0`` means the whole split. Reads ``<EVAL>/<name>/<system>.predictions.jsonl`` (per-document
ROUGE written by ``attnsum evaluate``) from every folder given. ``--pairs A:B`` adds the paired
differences A - B (per document, the same documents) with their 95% bootstrap intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from common import ROOT  # noqa: F401  (the checkout on the import path)

from attnsum.evaluate import BASELINES, METRICS, bootstrap


def per_document(folders: list[Path]) -> dict[str, list[list[float]]]:
    """system name -> per-document [R-1, R-2, R-Lsum] in file order."""
    out, ids = {}, {}
    for folder in folders:
        for run in sorted(p for p in folder.iterdir() if p.is_dir()):
            for pred in sorted(run.glob("*.predictions.jsonl")):
                system = pred.name.removesuffix(".predictions.jsonl")
                name = run.name if system == "model" else system
                rows = [json.loads(line) for line in pred.open(encoding="utf-8")]
                out[name] = [[r[m] for m in METRICS] for r in rows]
                ids[name] = [r["id"] for r in rows]
    for name, order in ids.items():  # every system scored on the same documents, in one order
        ref = next(iter(ids.values()))
        n = min(len(order), len(ref))
        if order[:n] != ref[:n]:
            raise SystemExit(f"{name}: its documents are not those of the other systems")
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


def pairs(systems: dict[str, list[list[float]]], wanted: list[str], first: int) -> str:
    lines = ["Paired differences (the same documents):", "",
             "| A - B | ROUGE-1 | ROUGE-2 | ROUGE-Lsum |", "|---|---|---|---|"]
    for pair in wanted:
        a, _, b = pair.partition(":")
        if a not in systems or b not in systems:
            raise SystemExit(f"--pairs {pair}: no such system (have {', '.join(systems)})")
        n = first or min(len(systems[a]), len(systems[b]))
        diff = (np.asarray(systems[a][:n], dtype=np.float64)
                - np.asarray(systems[b][:n], dtype=np.float64))
        s = bootstrap(diff)
        lines.append(f"| {a} - {b} | " + " | ".join(f"{s[m].mean:+.2f} [{s[m].low:+.2f}, "
                                                   f"{s[m].high:+.2f}]" for m in METRICS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("eval_dirs", nargs="+", type=Path)
    p.add_argument("--first", type=int, nargs="+", default=[0])
    p.add_argument("--pairs", nargs="*", default=[], metavar="A:B",
                   help="paired differences A - B on the last --first size")
    args = p.parse_args(argv)
    systems = per_document(args.eval_dirs)
    if not systems:
        raise SystemExit(f"{' '.join(map(str, args.eval_dirs))}: no *.predictions.jsonl below")
    blocks = [table(systems, n) for n in args.first]
    if args.pairs:
        blocks.append(pairs(systems, args.pairs, args.first[-1]))
    print("\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
