"""Head plans: for every layer and head, either a learned head or a (pattern, mode).

Text form (CLI): a preset name, or items separated by ``;``, each ``LAYERS:HEADS=PATTERN/MODE``
where LAYERS and HEADS are ``*`` or comma-separated indices and ranges (``0-2,5``). Later items
override earlier ones; unnamed heads stay learned. Examples::

    paper                                   # groups of 4 heads: match/mask, sent/mask,
                                            # next/synth, prev/synth, in every layer
    none                                    # every head learned
    *:0=match/mask; 0-2:1=sent/mask; 5:*=offset:2/synth

Data form (`to_dict`; checkpoints.py writes and reads it as JSON, in checkpoints and plan
files): ``{"num_layers": L, "num_heads": H, "heads": [[null | {"pattern": p, "mode": m}, ...],
...]}``.

A plan is parsed once where it enters (command line, Python API, plan file) and travels as a
`HeadPlan`; a layer's slice of it is a `LayerPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnsum.kernels.configs import HeadKind

from .patterns import MODES, Pattern, PatternError
from .registry import get_pattern

PLAN_PRESETS = ("none", "paper")
PAPER_GROUP = (("match", "mask"), ("sent", "mask"), ("next", "synth"), ("prev", "synth"))


@dataclass(frozen=True)
class HeadSpec:
    pattern: str
    mode: str

    def __post_init__(self):
        if self.mode not in MODES:
            raise PatternError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        p = get_pattern(self.pattern)
        if self.mode not in p.modes:
            raise PatternError(f"pattern {self.pattern!r} does not support mode {self.mode!r} "
                               f"(it supports {', '.join(p.modes)})")

    @property
    def pat(self) -> Pattern:
        return get_pattern(self.pattern)

    def __str__(self):
        return f"{self.pattern}/{self.mode}"


LayerPlan = tuple[HeadSpec | None, ...]  # one entry per head of a layer; None: learned


def head_kind(spec: HeadSpec | None) -> HeadKind:
    return HeadKind.LEARNED if spec is None else HeadKind[spec.mode.upper()]


def reads_qk(spec: HeadSpec | None) -> bool:
    """Whether a head reads q and k: learned and masked heads do, synthesized heads average v
    over their pattern."""
    return head_kind(spec) != HeadKind.SYNTH


def qk_heads(layer_plan: LayerPlan) -> list[int]:
    """The heads that read q and k (`reads_qk`). At least one head: a projection of width 0
    cannot be split into heads, so a layer of synthesized heads only keeps head 0's
    (`drop_synth_projections` in hf.py)."""
    return [h for h, s in enumerate(layer_plan) if reads_qk(s)] or [0]


def _indices(text: str, n: int, what: str) -> list[int]:
    text = text.strip()
    if text == "*":
        return list(range(n))
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = part.split("-")
                idx = list(range(int(a), int(b) + 1))
            else:
                idx = [int(part)]
        except ValueError:
            raise PatternError(f"bad {what} list {text!r}: use *, N, N-M or a comma list") from None
        for i in idx:
            if not 0 <= i < n:
                raise PatternError(f"{what} index {i} is out of range: the model has {n} {what}s "
                                   f"(0-{n - 1})")
        out.extend(idx)
    return out


@dataclass(frozen=True)
class HeadPlan:
    num_layers: int
    num_heads: int
    heads: tuple[LayerPlan, ...]  # (num_layers, num_heads)

    def __post_init__(self):
        if len(self.heads) != self.num_layers or any(len(r) != self.num_heads for r in self.heads):
            raise PatternError(f"plan is not {self.num_layers} layers x {self.num_heads} heads")

    # ---- construction

    @classmethod
    def none(cls, num_layers: int, num_heads: int) -> HeadPlan:
        return cls(num_layers, num_heads, tuple((None,) * num_heads for _ in range(num_layers)))

    @classmethod
    def from_assignments(cls, num_layers: int, num_heads: int,
                         assignments: dict[tuple[int, int], tuple[str, str]]) -> HeadPlan:
        """Patterned heads given as {(layer, head): (pattern, mode)}, e.g. from an analysis."""
        rows = [[None] * num_heads for _ in range(num_layers)]
        for (layer, head), (pattern, mode) in assignments.items():
            _indices(str(layer), num_layers, "layer")
            _indices(str(head), num_heads, "head")
            rows[layer][head] = HeadSpec(pattern, mode)
        return cls(num_layers, num_heads, tuple(tuple(r) for r in rows))

    @classmethod
    def parse(cls, text: str, num_layers: int, num_heads: int) -> HeadPlan:
        text = text.strip()
        if text == "none" or not text:
            return cls.none(num_layers, num_heads)
        if text == "paper":
            assignments = {(layer, h): PAPER_GROUP[h % 4]
                           for layer in range(num_layers) for h in range(num_heads)}
            return cls.from_assignments(num_layers, num_heads, assignments)
        assignments = {}
        for item in text.split(";"):
            if not item.strip():
                continue
            try:
                where, what = item.split("=")
                layers, heads = where.split(":")
                pattern, mode = what.strip().rsplit("/", 1)
            except ValueError:
                raise PatternError(f"bad plan item {item.strip()!r}: expected LAYERS:HEADS=PATTERN/MODE "
                                   f"(or a preset: {', '.join(PLAN_PRESETS)})") from None
            spec = (pattern.strip(), mode.strip())
            HeadSpec(*spec)  # validate once per item
            for layer in _indices(layers, num_layers, "layer"):
                for h in _indices(heads, num_heads, "head"):
                    assignments[(layer, h)] = spec
        return cls.from_assignments(num_layers, num_heads, assignments)

    # ---- serialisation

    def to_dict(self) -> dict:
        return {"num_layers": self.num_layers, "num_heads": self.num_heads,
                "heads": [[None if s is None else {"pattern": s.pattern, "mode": s.mode}
                           for s in row] for row in self.heads]}

    @classmethod
    def from_dict(cls, d: dict, num_layers: int | None = None, num_heads: int | None = None) -> HeadPlan:
        try:
            L, H = d["num_layers"], d["num_heads"]
            if (num_layers, num_heads) != (None, None) and (L, H) != (num_layers, num_heads):
                raise PatternError(f"the plan is for {L} layers x {H} heads, the model has "
                                   f"{num_layers} x {num_heads}")
            rows = tuple(tuple(None if s is None else HeadSpec(s["pattern"], s["mode"])
                               for s in row) for row in d["heads"])
        except (KeyError, TypeError, AttributeError):
            raise PatternError('bad plan: expected {"num_layers": L, "num_heads": H, "heads": '
                               '[[null or {"pattern": P, "mode": M}, ...], ...]}') from None
        return cls(L, H, rows)

    def __str__(self) -> str:
        """The text form: a preset's name where the plan is one, else one item per distinct
        head spec and layer."""
        for name in PLAN_PRESETS:
            if self == HeadPlan.parse(name, self.num_layers, self.num_heads):
                return name
        by_spec: dict[str, dict[int, list[int]]] = {}
        for layer, row in enumerate(self.heads):
            for h, s in enumerate(row):
                if s is not None:
                    by_spec.setdefault(str(s), {}).setdefault(layer, []).append(h)
        items = []
        for spec, layers in by_spec.items():
            for layer, heads in layers.items():
                items.append(f"{layer}:{','.join(map(str, heads))}={spec}")
        return "; ".join(items)

    # ---- queries

    def layer(self, index: int) -> LayerPlan:
        return self.heads[index]

    @property
    def is_learned(self) -> bool:
        return all(s is None for row in self.heads for s in row)
