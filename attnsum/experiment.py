"""The paper's comparison in one command: Lead-3, oracle, teacher, teacher + patterns, student
from scratch, student + patterns, student + patterns + distillation, each over several seeds.

Every trained system is a run folder under ``OUT/<system>/seed<k>``; a finished run and its test
scores are reused, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import load_model, resolve_checkpoint
from .config import MAX_LEN, ModelConfig, TrainConfig
from .evaluate import METRICS, evaluate_model, evaluate_system
from .io import atomic_write_json, atomic_write_text
from .precision import Precision, Runtime
from .preprocess import Example
from .train import load_examples, train


@dataclass(frozen=True)
class Settings:
    """How long and how big. `quick` fits 2 CPU cores in under 30 minutes; `full` is for a GPU."""

    max_len: int
    teacher_steps: int
    student_steps: int
    batch_size: int
    accum: int
    teacher_lr: float
    student_lr: float
    student_optimizer: str
    warmup: float | None  # None: the optimizer's default (schedule.py), sized to each run
    val_every: int
    student: str


# Peak learning rates (schedule.py). QUICK: AdamW fine-tuning of the teacher, a from-scratch
# student at a from-scratch rate. FULL: the paper's 5,000-step fine-tuning peak for the teacher and
# its Adam + Noam recipe (warmup 10,000 of 50,000 steps) for the student.
QUICK = Settings(max_len=256, teacher_steps=80, student_steps=80, batch_size=4, accum=1,
                 teacher_lr=5e-5, student_lr=5e-4, student_optimizer="adamw", warmup=None,
                 val_every=40, student="student-6x8")
FULL = Settings(max_len=MAX_LEN, teacher_steps=5000, student_steps=50000, batch_size=12, accum=3,
                teacher_lr=2e-5, student_lr=2e-5, student_optimizer="adam-noam", warmup=None,
                val_every=1000, student="student-6x12")


@dataclass(frozen=True)
class System:
    name: str
    preset: str  # "teacher" or "student": resolved by the settings
    plan: str = "none"
    inject: str = "heads"
    distill: bool = False


EXPERIMENT_SYSTEMS = (
    System("teacher", "teacher"),
    System("teacher+patterns", "teacher", "paper", "side"),
    System("student", "student"),
    System("student+patterns", "student", "paper"),
    System("student+patterns+distill", "student", "paper", distill=True),
)


def system_config(system: System, s: Settings, seed: int, out: Path, dataset: str,
                  limit: int | None = None) -> TrainConfig:
    is_teacher = system.preset == "teacher"
    return TrainConfig(
        model=ModelConfig.from_preset("minilm" if is_teacher else s.student, system.plan,
                                      system.inject, max_len=s.max_len),
        dataset=dataset, limit=limit, steps=s.teacher_steps if is_teacher else s.student_steps,
        batch_size=s.batch_size,
        accum=s.accum, optimizer="adamw" if is_teacher else s.student_optimizer,
        lr=s.teacher_lr if is_teacher else s.student_lr, warmup=s.warmup,
        val_every=s.val_every, seed=seed, out=str(out / system.name / f"seed{seed}"),
        teacher=str(resolve_checkpoint(out / "teacher" / f"seed{seed}")) if system.distill else None)


def run_system(cfg: TrainConfig, train_ex: list[Example], val_ex: list[Example],
               test_ex: list[Example], precision: Precision, device) -> dict[str, float]:
    """Train (or reuse) one run on `device` and score its best checkpoint on the test split."""
    done = Path(cfg.out) / "test_scores.json"
    if done.is_file():
        return json.loads(done.read_text())
    train(cfg, train_ex, val_ex, device=device)
    model = load_model(cfg.out).to(device)
    scores = {m: s.mean for m, s in evaluate_model(model, test_ex, precision, Path(cfg.out), "test",
                                                   device=device).items()}
    atomic_write_json(done, scores)
    return scores


def _table(rows: dict[str, list[dict[str, float]]]) -> str:
    head = "| system | seeds | ROUGE-1 | ROUGE-2 | ROUGE-Lsum |\n|---|---|---|---|---|"
    lines = [head]
    for name, runs in rows.items():
        cells = []
        for m in METRICS:
            vals = np.array([r[m] for r in runs])
            cells.append(f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}" if len(vals) > 1
                         else f"{vals.mean():.2f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_experiment(out: str | Path = "runs/experiment", seeds: int = 3, full: bool = False,
                   dataset: str = "embedded", limit: int | None = None,
                   systems: tuple[System, ...] = EXPERIMENT_SYSTEMS, device: str | None = None
                   ) -> str:
    """Run every system for `seeds` seeds on `device` (default: the GPU where there is one);
    writes OUT/experiment.md and .json, returns the Markdown table (mean ± sample standard
    deviation over seeds)."""
    out = Path(out)
    s = FULL if full else QUICK
    base = TrainConfig(model=ModelConfig.from_preset("tiny", max_len=s.max_len), dataset=dataset,
                       limit=limit)
    train_ex = load_examples(base, "train")
    val_ex = load_examples(base, "val")
    test_ex = load_examples(base, "test")
    rt = Runtime.resolve(device, base.precision)
    dev, precision = rt.device, rt.precision
    rows: dict[str, list[dict[str, float]]] = {}
    for baseline in ("lead3", "oracle"):
        rows[baseline] = [{m: v.mean for m, v in evaluate_system(baseline, test_ex).items()}]
    for system in systems:
        for seed in range(seeds):
            cfg = system_config(system, s, seed, out, dataset, limit=limit)
            rows.setdefault(system.name, []).append(run_system(cfg, train_ex, val_ex, test_ex, precision,
                                                                       dev))
    table = _table(rows)
    settings = {"settings": vars(s), "dataset": dataset, "seeds": seeds, "limit": limit,
                "test_documents": len(test_ex)}
    atomic_write_json(out / "experiment.json", {"rows": rows, **settings})
    atomic_write_text(out / "experiment.md", table + "\n\n" + json.dumps(settings, indent=2) + "\n")
    return table
