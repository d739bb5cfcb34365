"""What a head plan costs: the work fraction of each head kind that the report's plan editor
prices plans with (`plan_costs`, from attention/work.py), and the speeds measured of plans by
bench/bench_students.py (`measured_speeds`), shown beside them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from .attention import HeadPlan, PatternContext, get_pattern
from .attention.registry import pattern_names
from .attention.work import head_work
from .errors import InputError
from .preprocess import Example, load_tokenizer

WINDOW = "window:4"  # the window the plan editor offers


COST_LENGTHS = (512, 4096)


def plan_costs(examples: Sequence[Example], lengths: Sequence[int] = COST_LENGTHS) -> dict:
    """The work fraction of a head of each kind ("learned", and "PATTERN/MODE" for every
    pattern and mode registered) at each length, on validation documents laid end to end (one
    long document of real sentences). Patterns without a range form run on the reference path:
    work 1. {"lengths": [...], "work": {kind: [fraction per length]}}."""
    from .attention.patterns import MODES

    ids = [t for ex in examples for t in ex.input_ids]
    if not ids:
        raise InputError("no validation document to price the plan on")
    get_pattern(WINDOW)  # a window among the choices (window:K is built on first use)
    kinds = [None] + [(name, mode) for name in pattern_names() for mode in MODES
                      if mode in get_pattern(name).modes]
    work: dict[str, list[float]] = {"learned" if k is None else "/".join(k): [] for k in kinds}
    for n in lengths:
        row = torch.tensor([(ids * (n // len(ids) + 1))[:n]])
        ctx = PatternContext.from_bertsum(row, torch.ones_like(row),
                                          cls_id=load_tokenizer().cls_token_id)
        ranged = [k for k in kinds if k is None or get_pattern(k[0]).has_ranges]
        plan = HeadPlan.from_assignments(1, len(ranged), {
            (0, h): k for h, k in enumerate(ranged) if k is not None}).layer(0)
        fractions = head_work(plan, ctx, flex_block=None)
        for k in kinds:
            key = "learned" if k is None else "/".join(k)
            work[key].append(fractions[ranged.index(k)]["work_fraction"] if k in ranged else 1.0)
    return {"lengths": list(lengths), "work": work}


def measured_speeds(paths: Sequence[Path] | None = None) -> list[dict]:
    """The model-only speeds that bench/bench_students.py measured for each plan (its
    students.csv files under bench/results/ of a checkout, or `paths`; none in an installed
    package): per file, the patterned rows of its last commit, each with its speedup over the
    teacher and over its dense twin (the model named with "dense" for the plan) at the same
    length, batch and precision."""
    if paths is None:
        paths = sorted((Path(__file__).resolve().parents[1] / "bench" / "results").glob(
            "*/students.csv"))
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            table = list(csv.DictReader(f))
        if not table:
            continue
        last = [r for r in table if r["commit"] == table[-1]["commit"]]
        speed = {(r["model"], r["N"], r["batch"], r["precision"]): float(r["docs_per_s"])
                 for r in last}
        for r in last:
            if r["plan"] == "none":
                continue
            twin = speed.get((r["model"].replace(r["plan"], "dense"), r["N"], r["batch"],
                              r["precision"]))
            rows.append({"source": f"{path.parent.name}/{path.name}", "device": r["device"],
                         "commit": r["commit"], "model": r["model"], "plan": r["plan"],
                         "N": int(r["N"]), "batch": int(r["batch"]), "precision": r["precision"],
                         "vs_teacher": float(r["speedup"]),
                         "vs_twin": float(r["docs_per_s"]) / twin if twin else None})
    return rows
