"""The dense reference of one layer under a head plan: materializes (B, H, N, N) masks and
probabilities in fp32 and calls `attnsum.kernels.attention_ref`. Tests, benchmarks, the analysis
(attention maps) and patterns without a range form use it.

Every function takes q, k, v of shape (B, H, N, D), a `LayerPlan` (one `HeadSpec` or None per
head) and the batch's `PatternContext`. Learned heads attend every non-padding key (padding
queries too, as in BERT). Pattern heads attend their pattern's keys; padding queries and rows with
no allowed key output zero. Every path first zeroes the padding rows of q, k and v
(`clear_padding`).
"""

from __future__ import annotations

import torch

from attnsum.kernels import attention_ref

from .patterns import PatternContext, PatternError, dense_mask
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


def synth_flags(plan: LayerPlan, device) -> torch.Tensor:
    return torch.tensor([s is not None and s.mode == "synth" for s in plan], device=device)


def reference_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None,
                        upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference: (out (B, H, N, D), probs (B, H, N, N), fp32 if upcast)."""
    check_inputs(q, k, v, plan, ctx)
    q, k, v = clear_padding(q, k, v, ctx)
    return attention_ref(q, k, v, layer_allowed(plan, ctx), synth_flags(plan, q.device), scale,
                         upcast)
