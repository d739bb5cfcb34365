"""Attention patterns as code.

A pattern is a predicate over (query i, key j): ``mask_mod(b, h, q_idx, kv_idx) -> bool`` in the
style of FlexAttention / attention-gym, built per batch from a `PatternContext`. One definition
serves the dense reference, the analysis (pattern scores) and the Hugging Face mask.

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

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
MODES = ("mask", "synth")


class PatternError(ValueError):
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
    def from_bertsum(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     cls_id: int = 101) -> PatternContext:
        """Sentences of a BERTSum input: each starts at a [CLS] and runs to the next one."""
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


# ---- matching token


def generate_matching_token(fallback: str = "full") -> Pattern:
    """token_id[i] == token_id[j] and i != j; a row with no match attends every key
    (``fallback="full"``, as in the paper's code) or only itself (``fallback="self"``)."""
    if fallback not in ("full", "self"):
        raise PatternError(f"matching-token fallback must be 'full' or 'self', got {fallback!r}")

    def predicate(ctx: PatternContext) -> MaskMod:
        tok, valid = ctx.token_ids, ctx.valid
        same = (tok[:, :, None] == tok[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        has_match = (same.sum(-1) > 1)  # (B, N), self always matches itself

        def matching_token(b, h, q, kv):
            match = (tok[b, q] == tok[b, kv]) & (q != kv)
            other = (q == kv) if fallback == "self" else torch.ones_like(match)
            return torch.where(has_match[b, q], match, other)

        return matching_token

    def ranges(ctx: PatternContext) -> Ranges:
        tok, valid = ctx.token_ids, ctx.valid
        big = torch.iinfo(torch.long).max
        keys = torch.where(valid, tok.long(), big)  # padding sorts last
        sorted_keys, perm = torch.sort(keys, dim=1, stable=True)
        size = (torch.searchsorted(sorted_keys, sorted_keys, side="right")
                - torch.searchsorted(sorted_keys, sorted_keys, side="left"))
        has_match = torch.empty_like(valid).scatter_(1, perm, size > 1)
        # Order: matched tokens grouped by id, then tokens with no match, then padding. The
        # no-match rows (dense rows with fallback "full") end up in the last query blocks.
        keys = torch.where(valid & ~has_match, big - 1, keys)
        sorted_keys, perm = torch.sort(keys, dim=1, stable=True)
        lo = torch.searchsorted(sorted_keys, sorted_keys, side="left")
        hi = torch.searchsorted(sorted_keys, sorted_keys, side="right")
        valid_sorted = torch.gather(valid, 1, perm)
        has_match = torch.gather(has_match, 1, perm) & valid_sorted
        pos = torch.arange(tok.shape[1], device=tok.device).expand_as(lo)
        if fallback == "full":
            n_valid = valid.sum(1, keepdim=True).expand_as(lo)
            lo = torch.where(has_match, lo, 0)
            hi = torch.where(has_match, hi, n_valid)
        else:
            lo = torch.where(has_match, lo, pos)
            hi = torch.where(has_match, hi, pos + 1)
        lo = torch.where(valid_sorted, lo, 0).int()
        hi = torch.where(valid_sorted, hi, 0).int()
        full = (~has_match & valid_sorted) if fallback == "full" else None
        return Ranges(perm, lo, hi, has_match & valid_sorted, full)

    name = "match" if fallback == "full" else "match-self"
    return Pattern(name, predicate, ranges, description=f"matching token, no match -> {fallback}")


# ---- intra-sentence


def generate_intra_sentence() -> Pattern:
    """i and j lie in the same sentence (its [CLS] and [SEP] included)."""

    def predicate(ctx: PatternContext) -> MaskMod:
        sid = ctx.sentence_ids

        def intra_sentence(b, h, q, kv):
            return (sid[b, q] == sid[b, kv]) & (sid[b, q] >= 0)

        return intra_sentence

    def ranges(ctx: PatternContext) -> Ranges:
        sid = ctx.sentence_ids
        # Number the runs of equal sentence ids; a run is a sentence (or a stretch outside
        # sentences, which gets an empty range below). Runs are ordered, so searchsorted finds
        # each run's [start, end).
        change = torch.ones_like(sid, dtype=torch.long)
        change[:, 1:] = (sid[:, 1:] != sid[:, :-1]).long()
        run = torch.cumsum(change, dim=1)
        lo = torch.searchsorted(run, run, side="left")
        hi = torch.searchsorted(run, run, side="right")
        inside = (sid >= 0) & ctx.valid
        return Ranges(None, torch.where(inside, lo, 0).int(), torch.where(inside, hi, 0).int(),
                      torch.zeros_like(inside))

    return Pattern("sent", predicate, ranges, description="intra-sentence")


# ---- positional offset


def generate_offset(k: int) -> Pattern:
    """j == i + k (k = +1: next token, k = -1: previous token)."""
    if k == 0:
        raise PatternError("offset 0 is attention to self; use a k other than 0")

    def predicate(ctx: PatternContext) -> MaskMod:
        def offset(b, h, q, kv):
            return kv == q + k

        offset.__name__ = f"offset_{k}"
        return offset

    def ranges(ctx: PatternContext) -> Ranges:
        B, N = ctx.valid.shape
        pos = torch.arange(N, device=ctx.valid.device).expand(B, N)
        j = pos + k
        inside = (j >= 0) & (j < N)
        ok = inside & torch.gather(ctx.valid, 1, j.clamp(0, N - 1)) & ctx.valid
        return Ranges(None, torch.where(ok, j, 0).int(), torch.where(ok, j + 1, 0).int(),
                      torch.zeros_like(ok))

    name = {1: "next", -1: "prev"}.get(k, f"offset:{k}")
    return Pattern(name, predicate, ranges, description=f"positional offset {k:+d}")


# ---- window


def _check_suffix_padding(ctx: PatternContext) -> torch.Tensor:
    """Tokens per document, checking that padding is a suffix (as in every batch the project
    builds); range forms in natural order that span several keys rely on it."""
    n = ctx.valid.sum(1)
    pos = torch.arange(ctx.valid.shape[1], device=ctx.valid.device)
    if not bool((ctx.valid == (pos[None, :] < n[:, None])).all()):
        raise PatternError("this range form needs padding at the end of each document")
    return n


def generate_window(k: int) -> Pattern:
    """|i - j| <= k: a local window around each token (itself included)."""
    if k < 1:
        raise PatternError(f"window size must be at least 1, got {k}")

    def predicate(ctx: PatternContext) -> MaskMod:
        def window(b, h, q, kv):
            return (q - kv).abs() <= k

        window.__name__ = f"window_{k}"
        return window

    def ranges(ctx: PatternContext) -> Ranges:
        n = _check_suffix_padding(ctx)[:, None]
        B, N = ctx.valid.shape
        pos = torch.arange(N, device=ctx.valid.device).expand(B, N)
        lo = (pos - k).clamp_min(0)
        hi = torch.minimum(pos + k + 1, n)
        return Ranges(None, torch.where(ctx.valid, lo, 0).int(), torch.where(ctx.valid, hi, 0).int(),
                      torch.zeros_like(ctx.valid))

    return Pattern(f"window:{k}", predicate, ranges, description=f"local window |i - j| <= {k}")


# ---- the sentence's own [CLS]


def _sentence_starts(ctx: PatternContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(first position of each token's sentence run, inside a sentence): (B, N) long, bool."""
    sid = ctx.sentence_ids
    change = torch.ones_like(sid, dtype=torch.long)
    change[:, 1:] = (sid[:, 1:] != sid[:, :-1]).long()
    run = torch.cumsum(change, dim=1)
    return torch.searchsorted(run, run, side="left"), (sid >= 0) & ctx.valid


def generate_sentence_cls() -> Pattern:
    """j is the first token ([CLS]) of i's sentence."""

    def predicate(ctx: PatternContext) -> MaskMod:
        start, inside = _sentence_starts(ctx)

        def sentence_cls(b, h, q, kv):
            return (kv == start[b, q]) & inside[b, q]

        return sentence_cls

    def ranges(ctx: PatternContext) -> Ranges:
        start, inside = _sentence_starts(ctx)
        return Ranges(None, torch.where(inside, start, 0).int(),
                      torch.where(inside, start + 1, 0).int(), torch.zeros_like(inside))

    return Pattern("sent-cls", predicate, ranges, description="the sentence's own [CLS]")


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Pattern] = {}
# Families named NAME:K, built on first use.
_FAMILIES: dict[str, Callable[[int], Pattern]] = {"offset": generate_offset, "window": generate_window}


def _add(pattern: Pattern) -> Pattern:
    for m in pattern.modes:
        if m not in MODES:
            raise PatternError(f"pattern {pattern.name!r}: unknown mode {m!r}")
    _REGISTRY[pattern.name] = pattern
    return pattern


def register_pattern(pattern: Pattern) -> Pattern:
    """Make a user pattern available by name to head plans (``name/mode``); see
    `load_pattern_file`. Built-in names (and the NAME:K families) cannot be taken."""
    if not isinstance(pattern, Pattern):
        raise PatternError(f"register_pattern takes a Pattern, got {type(pattern).__name__}")
    if pattern.name in _BUILTIN or pattern.name.split(":", 1)[0] in _FAMILIES:
        raise PatternError(f"pattern {pattern.name!r} shadows a built-in pattern; pick another name")
    if not pattern.name or any(c in pattern.name for c in ";=/,* "):
        raise PatternError(f"bad pattern name {pattern.name!r}: no spaces or ; = / , *")
    return _add(pattern)


for _p in (generate_matching_token("full"), generate_matching_token("self"),
           generate_intra_sentence(), generate_offset(1), generate_offset(-1),
           generate_sentence_cls()):
    _add(_p)
_BUILTIN = frozenset(_REGISTRY)


def get_pattern(name: str) -> Pattern:
    if name in _REGISTRY:
        return _REGISTRY[name]
    family, _, arg = name.partition(":")
    if family in _FAMILIES and arg:
        try:
            k = int(arg)
        except ValueError:
            raise PatternError(f"bad pattern {name!r}: use {family}:K with an integer K") from None
        pattern = _FAMILIES[family](k)
        return _REGISTRY.get(pattern.name) or _add(pattern)  # offset:1 is "next"
    raise PatternError(f"unknown pattern {name!r}: use one of {', '.join(pattern_names())}, "
                       "offset:K or window:K; a user pattern needs the --patterns file that "
                       "registers it")


def pattern_names() -> list[str]:
    return sorted(_REGISTRY)


def user_pattern_names() -> list[str]:
    return sorted(n for n in _REGISTRY if n not in _BUILTIN and n.split(":", 1)[0] not in _FAMILIES)


def load_pattern_file(path) -> list[str]:
    """Run a Python file that registers patterns (`register_pattern`); returns their names.
    User code runs only when a command is given ``--patterns FILE.py``. Every failure is one
    `PatternError` naming the file."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    if path.suffix != ".py" or not path.is_file():
        raise PatternError(f"{path}: no such pattern file (a .py file that registers patterns)")
    before = dict(_REGISTRY)
    spec = importlib.util.spec_from_file_location(f"attnsum_user_patterns_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except PatternError as e:
        raise PatternError(f"{path}: {e}") from None
    except BaseException as e:  # the user's code: any failure is reported, not raised
        if isinstance(e, KeyboardInterrupt):
            raise
        raise PatternError(f"{path}: the pattern file raised {type(e).__name__}: {e}") from None
    added = [n for n, p in _REGISTRY.items() if before.get(n) is not p]
    if not added:
        raise PatternError(f"{path}: registers no pattern (call "
                           "attnsum.attention.register_pattern(Pattern(...)))")
    return added
