"""The built-in patterns (`generate_*`): matching token, intra-sentence, positional offset,
window and the sentence's own [CLS], each a predicate with a range form (patterns.py explains
both). registry.py names them for head plans."""

from __future__ import annotations

import torch

from .patterns import MaskMod, Pattern, PatternContext, PatternError, Ranges

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
        run = _sentence_runs(ctx)
        lo = torch.searchsorted(run, run, side="left")
        hi = torch.searchsorted(run, run, side="right")
        inside = (ctx.sentence_ids >= 0) & ctx.valid
        return Ranges(None, torch.where(inside, lo, 0).int(), torch.where(inside, hi, 0).int(),
                      torch.zeros_like(inside))

    return Pattern("sent", predicate, ranges, description="intra-sentence")


def _sentence_runs(ctx: PatternContext) -> torch.Tensor:
    """(B, N) number of each token's run of equal sentence ids: a run is a sentence (or a
    stretch outside sentences). Runs are ordered, so searchsorted finds each run's [start, end)."""
    sid = ctx.sentence_ids
    change = torch.ones_like(sid, dtype=torch.long)
    change[:, 1:] = (sid[:, 1:] != sid[:, :-1]).long()
    return torch.cumsum(change, dim=1)


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
    run = _sentence_runs(ctx)
    return torch.searchsorted(run, run, side="left"), (ctx.sentence_ids >= 0) & ctx.valid


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
