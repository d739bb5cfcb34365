"""Attention of one layer under a head plan: the dense reference, the fast PyTorch path, and
the dispatch between them and the fused Triton kernel.

Every function takes q, k, v of shape (B, H, N, D), a `LayerPlan` (one `HeadSpec` or None per
head) and the batch's `PatternContext`, and returns (B, H, N, D).

Learned heads attend every non-padding key (padding queries too, as in BERT). Pattern heads
attend their pattern's keys; padding queries and rows with no allowed key output zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from attnsum_kernels import attention_ref

from .patterns import PatternContext, PatternError, Ranges, dense_mask
from .plan import LayerPlan

BACKENDS = ("auto", "triton", "torch", "reference")
WINDOW_BLOCK = 64  # queries per block of the PyTorch path's masked heads


def _check(q, k, v, plan: LayerPlan, ctx: PatternContext) -> None:
    if not (q.shape == k.shape == v.shape and q.dim() == 4):
        raise PatternError(f"q, k, v must share one (B, H, N, D) shape, got {tuple(q.shape)}, "
                           f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, N, _ = q.shape
    if len(plan) != H:
        raise PatternError(f"the layer plan has {len(plan)} heads, the input has {H}")
    if ctx.shape != (B, N):
        raise PatternError(f"the pattern context is for (B, N) = {ctx.shape}, the input is {(B, N)}")


# --------------------------------------------------------------------------- dense reference


def layer_allowed(plan: LayerPlan, ctx: PatternContext) -> torch.Tensor:
    """(B, H, N, N) bool: which keys each head's queries may attend."""
    B, N = ctx.shape
    learned = ctx.valid[:, None, :].expand(B, N, N)
    cache: dict[str, torch.Tensor] = {}
    masks = []
    for spec in plan:
        if spec is None:
            masks.append(learned)
        else:
            if spec.pattern not in cache:
                cache[spec.pattern] = dense_mask(spec.pat.mask_mod(ctx), B, N, ctx.valid.device)
            masks.append(cache[spec.pattern])
    return torch.stack(masks, dim=1)


def _synth_flags(plan: LayerPlan, device) -> torch.Tensor:
    return torch.tensor([s is not None and s.mode == "synth" for s in plan], device=device)


def reference_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None,
                        upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference: (out (B, H, N, D), probs (B, H, N, N), fp32 if upcast)."""
    _check(q, k, v, plan, ctx)
    return attention_ref(q, k, v, layer_allowed(plan, ctx), _synth_flags(plan, q.device), scale,
                         upcast)


# --------------------------------------------------------------------------- fast PyTorch path


def _gather_n(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """x (B, h, N, D) reordered along N by perm (B, N)."""
    if perm is None:
        return x
    return torch.gather(x, 2, perm[:, None, :, None].expand_as(x))


def _scatter_n(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Inverse of `_gather_n`."""
    if perm is None:
        return x
    return _gather_n(x, torch.argsort(perm, dim=1))


def _learned(q, k, v, valid, scale):
    any_key = valid.any(1)  # an all-padding document has no key: zero output, not NaN
    key_mask = (valid | ~any_key[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
    return out * any_key[:, None, None, None].to(out.dtype)


def _synthesize(v: torch.Tensor, r: Ranges) -> torch.Tensor:
    """Mean of v over each range, without q or k: differences of prefix sums."""
    vo = _gather_n(v, r.perm).float()  # (B, h, N, D)
    B, h, N, D = vo.shape
    cs = torch.cat([vo.new_zeros(B, h, 1, D), torch.cumsum(vo, dim=2)], dim=2)  # (B, h, N+1, D)
    lo = r.lo.long()[:, None, :, None].expand(B, h, N, D)
    hi = r.hi.long()[:, None, :, None].expand(B, h, N, D)
    total = torch.gather(cs, 2, hi) - torch.gather(cs, 2, lo)
    total = total - vo * r.exclude_self[:, None, :, None]
    out = total / r.counts().clamp_min(1)[:, None, :, None]
    return _scatter_n(out.to(v.dtype), r.perm)


@dataclass
class _Windows:
    """Index plan of a masked head group for one batch (shared by every layer): blocks of
    `block` ordered queries, each scoring only the window of `width` keys its rows span."""

    perm: torch.Tensor | None  # (B, N) the ranges' order
    block: int
    width: int
    keys: torch.Tensor  # (B, nblk * width) ordered key index of each window slot
    bias: torch.Tensor  # (B, 1, nblk, block, width) 0 where allowed, -inf elsewhere
    nonempty: torch.Tensor  # (B, 1, N, 1) rows with at least one banded key
    full_rows: torch.Tensor | None  # (B, m) ordered rows that attend every valid key
    full_mask: torch.Tensor | None  # (B, 1, m, 1) which of those m slots are real
    full_keys: torch.Tensor | None  # (B, 1, 1, N) bool, the valid keys of those rows


def _build_windows(r: Ranges, N: int, block: int) -> _Windows:
    B = r.lo.shape[0]
    dev = r.lo.device
    lo, hi = r.lo.long(), r.hi.long()
    banded = hi > lo
    if r.full is not None:
        banded = banded & ~r.full
    nblk = -(-N // block)
    pad = nblk * block - N

    def blocks(x, fill):
        return F.pad(x, (0, pad), value=fill).view(B, nblk, block)

    start = blocks(torch.where(banded, lo, N), N).amin(-1)  # window of each query block
    end = blocks(torch.where(banded, hi, 0), 0).amax(-1)
    width = max(1, int((end - start).clamp_min(0).max().item()))
    start = torch.minimum(start, end)
    j = start[:, :, None] + torch.arange(width, device=dev)  # (B, nblk, W)
    p = torch.arange(nblk * block, device=dev).view(1, nblk, block, 1)
    jj = j[:, :, None, :]
    ok = ((jj >= blocks(lo, 0)[..., None]) & (jj < blocks(hi, 0)[..., None])
          & blocks(banded, False)[..., None] & (jj < N)
          & ~(blocks(r.exclude_self, False)[..., None] & (jj == p)))  # (B, nblk, C, W)
    rows_ok = ok.any(-1, keepdim=True)
    bias = torch.zeros(ok.shape, device=dev).masked_fill(~ok & rows_ok, float("-inf"))
    nonempty = rows_ok.view(B, 1, nblk * block, 1)[:, :, :N]
    full_rows = full_mask = full_keys = None
    if r.full is not None and bool(r.full.any()):
        m = int(r.full.sum(1).max().item())
        full_rows = torch.argsort((~r.full).int(), dim=1, stable=True)[:, :m]  # full rows first
        full_mask = torch.gather(r.full, 1, full_rows)[:, None, :, None]
        n_valid = r.hi.max(dim=1).values  # a full row's range is the valid prefix
        full_keys = (torch.arange(N, device=dev)[None, :] < n_valid[:, None])[:, None, None, :]
    return _Windows(r.perm, block, width, j.clamp_max(N - 1).view(B, -1), bias[:, None],
                    nonempty, full_rows, full_mask, full_keys)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, h, N, D), idx (B, M) -> (B, h, M, D)."""
    B, h, _, D = x.shape
    return torch.gather(x, 2, idx[:, None, :, None].expand(B, h, idx.shape[1], D))


def _masked_windows(q, k, v, w: _Windows, scale: float) -> torch.Tensor:
    """Softmax attention restricted to ranges (block skipping), in the ranges' order."""
    qo, ko, vo = (_gather_n(x, w.perm) for x in (q, k, v))
    B, h, N, D = qo.shape
    nblk = w.keys.shape[1] // w.width
    pad = nblk * w.block - N
    kw = _gather_rows(ko, w.keys).view(B, h, nblk, w.width, D)
    vw = _gather_rows(vo, w.keys).view(B, h, nblk, w.width, D)
    qb = F.pad(qo, (0, 0, 0, pad)).view(B, h, nblk, w.block, D)
    # A plain softmax: on CPU it beats SDPA, which takes its slow path with a float mask.
    scores = torch.matmul(qb, kw.transpose(-1, -2)) * scale + w.bias.to(q.dtype)
    out = torch.matmul(torch.softmax(scores, dim=-1), vw)
    out = out.reshape(B, h, nblk * w.block, D)[:, :, :N] * w.nonempty.to(q.dtype)
    if w.full_rows is not None:  # rows that attend every key (matching token with no match)
        of = F.scaled_dot_product_attention(_gather_rows(qo, w.full_rows), ko, vo,
                                            attn_mask=w.full_keys, scale=scale)
        idx = w.full_rows[:, None, :, None].expand(B, h, w.full_rows.shape[1], D)
        out = out.scatter_add(2, idx, of * w.full_mask.to(of.dtype))
    return _scatter_n(out, w.perm)


def torch_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None
                    ) -> torch.Tensor:
    """Fast PyTorch path: learned heads through SDPA, synthesized heads by prefix sums (no q, k),
    masked heads on the key windows of their ranges; patterns without ranges fall back to the
    dense reference for their heads. Differentiable by autograd."""
    _check(q, k, v, plan, ctx)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    groups: dict[object, list[int]] = {}
    for h, spec in enumerate(plan):
        groups.setdefault(spec, []).append(h)
    # One head permutation that makes each group contiguous, then views per group: one
    # gather in forward and one scatter in backward instead of one per group.
    order = [h for heads in groups.values() for h in heads]
    permuted = order != list(range(len(order)))
    if permuted:
        idx = torch.tensor(order, device=q.device)
        q, k, v = (x.index_select(1, idx) for x in (q, k, v))
    sizes = [len(heads) for heads in groups.values()]
    outs = []
    for spec, qh, kh, vh in zip(groups, q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1),
                                strict=True):
        if spec is None:
            o = _learned(qh, kh, vh, ctx.valid, scale)
        elif not spec.pat.has_ranges:
            sub = (spec,) * qh.shape[1]
            o = attention_ref(qh, kh, vh, layer_allowed(sub, ctx), _synth_flags(sub, q.device),
                              scale)[0]
        elif spec.mode == "synth":
            o = _synthesize(vh, ctx.ranges(spec.pat))
        else:
            w = ctx.memo(("windows", spec.pattern, WINDOW_BLOCK),
                         lambda p=spec.pat, n=q.shape[2]: _build_windows(ctx.ranges(p), n, WINDOW_BLOCK))
            o = _masked_windows(qh, kh, vh, w, scale)
        outs.append(o.to(q.dtype))
    out = torch.cat(outs, dim=1)
    if permuted:
        out = out.index_select(1, torch.argsort(torch.tensor(order, device=q.device)))
    return out


# --------------------------------------------------------------------------- dispatch


def patterned_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None,
                        backend: str = "auto") -> torch.Tensor:
    """One layer's attention under `plan`: (B, H, N, D) -> (B, H, N, D).

    backend: ``auto`` (the fused Triton kernel on CUDA when available, else the PyTorch path),
    ``triton``, ``torch``, or ``reference`` (dense, materializes (B, H, N, N)).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return reference_attention(q, k, v, plan, ctx, scale)[0]
    if backend == "triton" or (backend == "auto" and q.is_cuda and _triton_ready(plan)):
        from .fused import fused_layer_attention

        return fused_layer_attention(q, k, v, plan, ctx, scale)
    return torch_attention(q, k, v, plan, ctx, scale)


def _triton_ready(plan: LayerPlan) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return all(s is None or s.pat.has_ranges for s in plan)
