"""The checks every attention path (reference.py, torch_path.py, triton_path.py) makes of its
inputs, and the zeroing of padding rows they all start with."""

from __future__ import annotations

import torch

from .patterns import PatternContext, PatternError
from .plan import LayerPlan


def check_inputs(q, k, v, plan: LayerPlan, ctx: PatternContext) -> None:
    if not (q.shape == k.shape == v.shape and q.dim() == 4):
        raise PatternError(f"q, k, v must share one (B, H, N, D) shape, got {tuple(q.shape)}, "
                           f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype and q.dtype.is_floating_point):
        raise PatternError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, "
                           f"{v.dtype}")
    if not (q.device == k.device == v.device == ctx.valid.device):
        raise PatternError(f"q, k, v and the pattern context must be on one device, got "
                           f"{q.device}, {k.device}, {v.device}, {ctx.valid.device}")
    B, H, N, _ = q.shape
    if len(plan) != H:
        raise PatternError(f"the layer plan has {len(plan)} heads, the input has {H}")
    if ctx.shape != (B, N):
        raise PatternError(f"the pattern context is for (B, N) = {ctx.shape}, the input is {(B, N)}")


def clear_padding(q, k, v, ctx: PatternContext):
    """q, k, v with the rows of padding tokens set to zero, so that nothing in a padding row (a
    NaN or Inf included) reaches other rows' outputs or gradients (0 x NaN is NaN); padding
    rows get zero gradients."""
    keep = ctx.valid[:, None, :, None]
    return tuple(torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
                 for x in (q, k, v))
