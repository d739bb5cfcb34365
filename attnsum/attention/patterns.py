"""Attention patterns as code.

A pattern is a predicate over (query i, key j): ``mask_mod(b, h, q_idx, kv_idx) -> bool`` in the
style of FlexAttention / attention-gym, built per batch from a `PatternContext`. One definition
serves the dense reference, the analysis (pattern scores) and the Hugging Face mask.

This module holds the core: `PatternContext` (the batch), `Ranges`, `Pattern`, the mask
combinators and `dense_mask`. The built-in patterns are in builtin_patterns.py; the registry
that names them for head plans, and loads user pattern files, is registry.py.

Built-in patterns also describe themselves as *ranges* (attnsum/attention/__init__.py): in some
ordering of the positions, query p attends the contiguous keys [lo[p], hi[p]) of that ordering, minus itself
when ``exclude_self[p]``. The fast paths (PyTorch here, Triton in ``attnsum.kernels``) run only
on ranges; a new pattern that has no ranges runs on the dense reference path.

Padding keys are never attended. Padding queries of a pattern head attend nothing (their
output is zero). A query whose pattern allows no key (the +1 pattern at the last token, say)
outputs zero as well, in both modes.

The matching-token pattern for token ids ``a b a c`` (self excluded; row 3 has no match and
falls back to full attention with ``fallback="full"``, to itself with ``fallback="self"``)::

          k0 k1 k2 k3
      q0 [ .  .  x  . ]
      q1 [ .  .  .  . ]  <- no match: full row, or only q1 with fallback="self"
      q2 [ x  .  .  . ]
      q3 [ .  .  .  . ]  <- no match
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from attnsum.errors import AttnsumError

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MODES = ("mask", "synth")


class PatternError(AttnsumError, ValueError):
    """A pattern, plan or context does not fit its input."""


# --------------------------------------------------------------------------- combinators


def and_masks(*mods: MaskMod) -> MaskMod:
    def mask_mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out & m(b, h, q, kv)
        return out

    mask_mod.__name__ = "and(" + ",".join(m.__name__ for m in mods) + ")"
    return mask_mod


def or_masks(*mods: MaskMod) -> MaskMod:
    def mask_mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out | m(b, h, q, kv)
        return out

    mask_mod.__name__ = "or(" + ",".join(m.__name__ for m in mods) + ")"
    return mask_mod


# --------------------------------------------------------------------------- per-batch context


@dataclass(frozen=True)
class Ranges:
    """Query p (in `order`) attends keys order[lo[p]:hi[p]], minus order[p] if exclude_self[p].

    perm: (B, N) long, position p of the ordering holds token perm[b, p]; None = natural order.
    lo, hi: (B, N) int32, indexed by ordered query position. exclude_self: (B, N) bool.
    full: (B, N) bool or None, rows that attend every non-padding key (their range is the
    whole valid prefix of the order); fast paths may treat them as dense rows.
    """

    perm: torch.Tensor | None
    lo: torch.Tensor
    hi: torch.Tensor
    exclude_self: torch.Tensor
    full: torch.Tensor | None = None

    def counts(self) -> torch.Tensor:  # (B, N) number of allowed keys per ordered query
        return (self.hi - self.lo - self.exclude_self.int()).clamp_min(0)


@dataclass
class PatternContext:
    """Everything a pattern needs about one batch, built once and shared by all layers.

    token_ids: (B, N) long. valid: (B, N) bool, False at padding.
    sentence_ids: (B, N) long, index of the sentence holding each token, -1 outside sentences.
    """

    token_ids: torch.Tensor
    valid: torch.Tensor
    sentence_ids: torch.Tensor
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.token_ids.shape)

    @classmethod
    def from_spans(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   spans: Sequence[Sequence[tuple[int, int]]]) -> PatternContext:
        """`spans[b]` lists the [start, end) of each sentence of document b (in order, not
        overlapping, inside the non-padding tokens)."""
        if input_ids.dim() != 2:
            raise PatternError(f"input_ids must be (B, N), got shape {tuple(input_ids.shape)}")
        B, N = input_ids.shape
        valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                 else attention_mask.bool())
        if len(spans) != B:
            raise PatternError(f"got sentence spans for {len(spans)} documents, batch has {B}")
        sid = torch.full((B, N), -1, dtype=torch.long)
        lengths = valid.sum(1).tolist()
        for b, doc in enumerate(spans):
            prev_end = 0
            for i, (s, e) in enumerate(doc):
                if not (prev_end <= s < e <= lengths[b]):
                    raise PatternError(
                        f"sentence span {i} = [{s}, {e}) of document {b} does not fit its "
                        f"{lengths[b]} tokens (spans must be ordered, non-empty, non-overlapping)")
                sid[b, s:e] = i
                prev_end = e
        return cls(input_ids, valid, sid.to(input_ids.device))

    @classmethod
    def from_bertsum(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
                     cls_id: int) -> PatternContext:
        """Sentences of a BERTSum input: each starts at a [CLS] (`cls_id`, the tokenizer's) and
        runs to the next one."""
        valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                 else attention_mask.bool())
        sid = torch.cumsum((input_ids == cls_id) & valid, dim=1) - 1
        sid = torch.where(valid, sid, torch.full_like(sid, -1))
        return cls(input_ids, valid, sid)

    def memo(self, key, build: Callable[[], object]):
        """`build()` once per batch: what every layer can share (range tables, index plans)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def ranges(self, pattern: Pattern) -> Ranges:
        """The pattern's range table for this batch, computed once, checked (`check_ranges`)
        and cached."""
        def build():
            r = pattern.ranges(self)
            check_ranges(r, self, pattern)
            return r

        return self.memo(("ranges", pattern.name), build)


DEBUG_ENV = "ATTNSUM_DEBUG"  # set to 1: full range-table checks (check_ranges)


def check_ranges(r: Ranges, ctx: PatternContext, pattern: Pattern) -> None:
    """What the fast paths rely on, checked where a range table is built: shapes and dtypes,
    0 <= lo <= hi <= N, exclude_self only inside its row's range; cheap (O(B N)). With
    ATTNSUM_DEBUG=1 also that perm is a permutation of every row and that the table allows
    exactly the pattern's predicate (O(B N^2))."""
    import os

    B, N = ctx.shape
    where = f"pattern {pattern.name!r}: range table"
    for name in ("lo", "hi", "exclude_self") + (("perm",) if r.perm is not None else ()):
        t = getattr(r, name)
        if tuple(t.shape) != (B, N):
            raise PatternError(f"{where}: {name} has shape {tuple(t.shape)}, expected {(B, N)}")
    if r.lo.dtype != torch.int32 or r.hi.dtype != torch.int32 or r.exclude_self.dtype != torch.bool:
        raise PatternError(f"{where}: lo and hi must be int32 and exclude_self bool, got "
                           f"{r.lo.dtype}, {r.hi.dtype}, {r.exclude_self.dtype}")
    if not bool(((r.lo >= 0) & (r.lo <= r.hi) & (r.hi <= N)).all()):
        raise PatternError(f"{where}: needs 0 <= lo <= hi <= N = {N} on every row")
    pos = torch.arange(N, device=r.lo.device)[None, :]
    if bool((r.exclude_self & ((pos < r.lo) | (pos >= r.hi))).any()):
        raise PatternError(f"{where}: exclude_self is set on a row whose range does not hold it")
    if os.environ.get(DEBUG_ENV) != "1":
        return
    if r.perm is not None and not torch.equal(torch.sort(r.perm, dim=1).values,
                                              pos.expand(B, N).to(r.perm.dtype)):
        raise PatternError(f"{where}: perm is not a permutation of 0..N-1 in every row")
    order = r.perm if r.perm is not None else pos.expand(B, N)
    inside = (pos[:, :, None] >= r.lo[:, None, :]) & (pos[:, :, None] < r.hi[:, None, :])
    inside = inside.transpose(1, 2) & ~(r.exclude_self[:, :, None] & (pos[:, None, :] == pos[:, :, None]))
    allowed = torch.zeros(B, N, N, dtype=torch.bool, device=r.lo.device)
    b = torch.arange(B, device=r.lo.device)[:, None, None]
    allowed[b, order[:, :, None], order[:, None, :]] = inside
    if not torch.equal(allowed, dense_mask(pattern.mask_mod(ctx), B, N, r.lo.device)):
        raise PatternError(f"{where}: does not allow the same keys as the pattern's predicate")


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    """A named pattern. `predicate(ctx)` returns its mask_mod for a batch (padding is handled
    by the caller); `ranges(ctx)`, when defined, its range table for the fast paths."""

    name: str
    predicate: Callable[[PatternContext], MaskMod]
    range_fn: Callable[[PatternContext], Ranges] | None = None
    modes: tuple[str, ...] = MODES
    description: str = ""

    def mask_mod(self, ctx: PatternContext) -> MaskMod:
        """The full predicate: the pattern on non-padding queries and keys."""
        valid = ctx.valid

        def padding(b, h, q, kv):
            return valid[b, q] & valid[b, kv]

        return and_masks(padding, self.predicate(ctx))

    @property
    def has_ranges(self) -> bool:
        return self.range_fn is not None

    def ranges(self, ctx: PatternContext) -> Ranges:
        if self.range_fn is None:
            raise PatternError(f"pattern {self.name!r} has no range form; use the reference path")
        return self.range_fn(ctx)


def dense_mask(mask_mod: MaskMod, B: int, N: int, device=None) -> torch.Tensor:
    """Evaluate a mask_mod on every (b, q, kv): (B, N, N) bool."""
    b = torch.arange(B, device=device)[:, None, None]
    q = torch.arange(N, device=device)[None, :, None]
    kv = torch.arange(N, device=device)[None, None, :]
    h = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(b, h, q, kv).expand(B, N, N)
