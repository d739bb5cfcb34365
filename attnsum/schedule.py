"""Learning-rate schedules that are a function of the run.

Two optimizers, each with its schedule:

- ``adamw`` (the default): linear warmup to the peak, then linear decay to zero at the last
  step, as BERT-class fine-tuning recipes do. Default warmup: 6% of the run.
- ``adam-noam``: Adam (0.9, 0.999, eps 1e-9) with the Noam curve of the paper (BERTSum):
  ``lr(t) = peak * min(t / w, sqrt(w / t))``, which is ``2e-3 * min(t^-0.5, t * w^-1.5)`` for the
  paper's peak 2e-5 and w = 10,000. Default warmup: the paper's 10,000 steps, but never more
  than 20% of the run (so ``--steps 50000`` is exactly the paper's curve).

``--lr`` is always the PEAK rate. Its default follows the optimizer and the model: AdamW 5e-5 for
a pretrained encoder (fine-tuning peaks are 1e-5 to 1e-4; higher rates wreck the pretrained
weights), AdamW 5e-4 for a model trained from scratch (a small random model has nothing to
wreck and learns too slowly at fine-tuning rates), Noam 2e-5 (the paper's, for both).

``--warmup X``: X >= 1 is a number of steps, 0 <= X < 1 a fraction of the run.

Steps are counted from 1: ``lr(t)`` is the rate of the t-th optimizer update.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import AttnsumError

OPTIMIZERS = ("adamw", "adam-noam")
PAPER_WARMUP = 10_000  # BERTSum's Noam warmup, kept by the paper
PAPER_PEAK = 2e-3 * PAPER_WARMUP ** -0.5  # 2e-5: the paper's lr 2e-3 at the top of its warmup


class ScheduleError(AttnsumError, ValueError):
    """A schedule that does not fit its run."""


def default_peak_lr(optimizer: str, pretrained: bool) -> float:
    if optimizer == "adam-noam":
        return PAPER_PEAK
    return 5e-5 if pretrained else 5e-4


def default_warmup_steps(optimizer: str, steps: int) -> int:
    if optimizer == "adam-noam":
        return max(1, min(PAPER_WARMUP, round(0.2 * steps)))
    return max(1, round(0.06 * steps))


@dataclass(frozen=True)
class Schedule:
    optimizer: str
    peak_lr: float
    warmup_steps: int
    total_steps: int

    def factor(self, step: int) -> float:
        """lr(step) / peak_lr for the step-th update (1-based)."""
        t, w, n = max(step, 1), self.warmup_steps, self.total_steps
        if self.optimizer == "adam-noam":
            return min(t / w, math.sqrt(w / t))
        if t <= w:
            return t / w
        return max(0.0, (n - t + 1) / (n - w + 1))  # the last update gets peak / (n - w + 1)

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def describe(self) -> str:
        shape = ("Noam (inverse square root after warmup)" if self.optimizer == "adam-noam"
                 else "linear warmup, linear decay to zero")
        reach = (f"reached at step {self.warmup_steps}" if self.warmup_steps <= self.total_steps
                 else f"never reached: the run ends at {self.factor(self.total_steps):.0%} of it")
        return (f"{self.optimizer}, {shape}: peak lr {self.peak_lr:.3g} {reach}; "
                f"lr at the last step ({self.total_steps}): {self.lr(self.total_steps):.3g}")

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}


def make_schedule(optimizer: str, steps: int, lr: float | None = None,
                  warmup: float | None = None, pretrained: bool = False,
                  allow_short_warmup: bool = False) -> Schedule:
    """The schedule of a run of `steps` updates; defaults as in the module docstring. A run that
    would end inside its warmup is refused unless `allow_short_warmup`."""
    if optimizer not in OPTIMIZERS:
        raise ScheduleError(f"unknown optimizer {optimizer!r}: use {' or '.join(OPTIMIZERS)}")
    if lr is not None and not lr > 0:
        raise ScheduleError(f"--lr must be positive, got {lr}")
    if warmup is None:
        w = default_warmup_steps(optimizer, steps)
    elif warmup < 0:
        raise ScheduleError(f"--warmup must be a step count (>= 1) or a fraction of the run "
                            f"(0 to 1), got {warmup}")
    elif warmup < 1:
        w = max(1, round(warmup * steps))
    elif warmup != int(warmup):
        raise ScheduleError(f"--warmup {warmup}: a step count must be a whole number")
    else:
        w = int(warmup)
    s = Schedule(optimizer, lr if lr is not None else default_peak_lr(optimizer, pretrained), w,
                 steps)
    if w > steps and not allow_short_warmup:
        raise ScheduleError(f"the run ends at step {steps}, inside its {w}-step warmup: the "
                            f"learning rate would reach only {s.factor(steps):.0%} of its peak. "
                            "Lower --warmup (or give it as a fraction, e.g. 0.06), or pass "
                            "--allow-short-warmup")
    return s
