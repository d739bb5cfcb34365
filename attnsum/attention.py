"""Attention of one layer under a head plan: the dense reference, the fast PyTorch path, and
the dispatch between them and the fused Triton kernel.

Every function takes q, k, v of shape (B, H, N, D), a `LayerPlan` (one `HeadSpec` or None per
head) and the batch's `PatternContext`, and returns (B, H, N, D).

Learned heads attend every non-padding key (padding queries too, as in BERT). Pattern heads
attend their pattern's keys; padding queries and rows with no allowed key output zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from attnsum_kernels import attention_ref

from .patterns import PatternContext, PatternError, Ranges, dense_mask
from .plan import LayerPlan

BACKENDS = ("auto", "triton", "torch", "reference")


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


def reference_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference: (out (B, H, N, D), probs (B, H, N, N) fp32)."""
    _check(q, k, v, plan, ctx)
    return attention_ref(q, k, v, layer_allowed(plan, ctx), _synth_flags(plan, q.device), scale)


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


def _masked_windows(q, k, v, r: Ranges, scale: float, block: int = 64) -> torch.Tensor:
    """Softmax attention restricted to ranges, in the ranges' order: each block of `block`
    ordered queries scores only the window of keys its rows' ranges span (block skipping)."""
    qo, ko, vo = (_gather_n(x, r.perm) for x in (q, k, v))
    B, h, N, D = qo.shape
    lo, hi, excl = r.lo.long(), r.hi.long(), r.exclude_self
    banded = hi > lo
    if r.full is not None:
        banded = banded & ~r.full
    nblk = -(-N // block)
    pad = nblk * block - N

    def blocks(x, fill):
        return F.pad(x, (0, pad), value=fill).view(B, nblk, block)

    # Window of each query block: [min lo, max hi) over its banded rows.
    start = blocks(torch.where(banded, lo, N), N).amin(-1)
    end = blocks(torch.where(banded, hi, 0), 0).amax(-1)
    width = int((end - start).clamp_min(0).max().item()) if N else 0
    out = qo.new_zeros(B, h, N, D)
    if width > 0:
        start = torch.minimum(start, end)
        j = start[:, :, None] + torch.arange(width, device=q.device)  # (B, nblk, W)
        in_seq = j < N
        jc = j.clamp_max(N - 1)
        bidx = torch.arange(B, device=q.device)[:, None, None]
        kw = ko.transpose(1, 2)[bidx, jc].permute(0, 3, 1, 2, 4)  # (B, h, nblk, W, D)
        vw = vo.transpose(1, 2)[bidx, jc].permute(0, 3, 1, 2, 4)
        qb = F.pad(qo, (0, 0, 0, pad)).view(B, h, nblk, block, D)
        s = torch.matmul(qb, kw.transpose(-1, -2)).float() * scale  # (B, h, nblk, C, W)
        p = torch.arange(nblk * block, device=q.device).view(1, nblk, block, 1)
        jj = j[:, :, None, :]  # (B, nblk, 1, W)
        ok = ((jj >= blocks(lo, 0)[..., None]) & (jj < blocks(hi, 0)[..., None])
              & blocks(banded, False)[..., None] & in_seq[:, :, None, :]
              & ~(blocks(excl, False)[..., None] & (jj == p)))  # (B, nblk, C, W)
        ok = ok[:, None]
        any_key = ok.any(-1, keepdim=True)
        s = torch.where(ok, s, float("-inf"))
        s = torch.where(any_key, s, 0.0)
        prob = (torch.softmax(s, dim=-1) * any_key).to(vw.dtype)
        out = torch.matmul(prob, vw).view(B, h, nblk * block, D)[:, :, :N]
    if r.full is not None and bool(r.full.any()):
        out = out + _full_rows(qo, ko, vo, r, scale)
    return _scatter_n(out, r.perm)


def _full_rows(qo, ko, vo, r: Ranges, scale: float) -> torch.Tensor:
    """Rows that attend every valid key (e.g. matching token with no match): gathered and run
    densely; zero elsewhere. Valid keys are the prefix [0, n_valid) of the order."""
    B, h, N, D = qo.shape
    m = int(r.full.sum(1).max().item())
    rows = torch.argsort((~r.full).int(), dim=1, stable=True)[:, :m]  # full rows first
    is_full = torch.gather(r.full, 1, rows)  # (B, m)
    qf = torch.gather(qo, 2, rows[:, None, :, None].expand(B, h, m, D))
    n_valid = r.hi.max(dim=1).values  # the full range's end is the valid prefix length
    key_valid = torch.arange(N, device=qo.device)[None, :] < n_valid[:, None]
    of = _learned(qf, ko, vo, key_valid, scale) * is_full[:, None, :, None]
    out = qo.new_zeros(B, h, N, D)
    return out.scatter_add(2, rows[:, None, :, None].expand(B, h, m, D), of.to(out.dtype))


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
    outs, order = [], []
    for spec, heads in groups.items():
        idx = torch.tensor(heads, device=q.device)
        qh, kh, vh = q[:, idx], k[:, idx], v[:, idx]
        if spec is None:
            o = _learned(qh, kh, vh, ctx.valid, scale)
        elif not spec.pat.has_ranges:
            sub = (spec,) * len(heads)
            o = attention_ref(qh, kh, vh, layer_allowed(sub, ctx), _synth_flags(sub, q.device),
                              scale)[0]
        elif spec.mode == "synth":
            o = _synthesize(vh, ctx.ranges(spec.pat))
        else:
            o = _masked_windows(qh, kh, vh, ctx.ranges(spec.pat), scale)
        outs.append(o.to(q.dtype))
        order.extend(heads)
    out = torch.cat(outs, dim=1)
    if order != sorted(order):
        out = out[:, torch.argsort(torch.tensor(order, device=q.device))]
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
