"""The checks every attention path (reference.py, torch_path.py, triton_path.py) makes of its
inputs, and the zeroing of padding rows they all start with.

q and k may hold only the heads that read them (`qk_heads`: a model whose synthesized heads'
projections were cut, `drop_synth_projections` in hf.py); `all_heads` puts them back in place
for the paths that want every head."""

from __future__ import annotations

import torch

from .patterns import PatternContext, PatternError
from .plan import LayerPlan, qk_heads


def check_inputs(q, k, v, plan: LayerPlan, ctx: PatternContext) -> None:
    if not (q.shape == k.shape and q.dim() == v.dim() == 4 and (
            q.shape == v.shape or (q.shape[1] == len(qk_heads(plan))
                                   and q.shape[::2] == v.shape[::2] and q.shape[3] == v.shape[3]))):
        raise PatternError(f"q, k, v must share one (B, H, N, D) shape (q and k may hold only "
                           f"the heads that read them), got {tuple(q.shape)}, {tuple(k.shape)}, "
                           f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype and q.dtype.is_floating_point):
        raise PatternError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, "
                           f"{v.dtype}")
    if not (q.device == k.device == v.device == ctx.valid.device):
        raise PatternError(f"q, k, v and the pattern context must be on one device, got "
                           f"{q.device}, {k.device}, {v.device}, {ctx.valid.device}")
    B, H, N, _ = v.shape
    if len(plan) != H:
        raise PatternError(f"the layer plan has {len(plan)} heads, the input has {H}")
    if ctx.shape != (B, N):
        raise PatternError(f"the pattern context is for (B, N) = {ctx.shape}, the input is {(B, N)}")


def all_heads(q, k, plan: LayerPlan, num_heads: int):
    """q and k of every head: zeros for the heads that do not read them."""
    if q.shape[1] == num_heads:
        return q, k
    keep = qk_heads(plan)

    def full(x):
        out = x.new_zeros(x.shape[0], num_heads, *x.shape[2:])
        out[:, keep] = x
        return out

    return full(q), full(k)


def clear_padding(q, k, v, ctx: PatternContext):
    """q, k, v with the rows of padding tokens set to zero, so that nothing in a padding row (a
    NaN or Inf included) reaches other rows' outputs or gradients (0 x NaN is NaN); padding
    rows get zero gradients. A batch without padding is returned as it is."""
    if not ctx.memo("padded", lambda: not bool(ctx.valid.all())):
        return q, k, v
    keep = ctx.valid[:, None, :, None]
    return tuple(torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
                 for x in (q, k, v))
