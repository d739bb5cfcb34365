"""The dense reference of one layer under a head plan: materializes (B, H, N, N) masks and
probabilities in fp32 and calls `attnsum.kernels.dense_masked_attention`. Tests, benchmarks, the analysis
(attention maps) and patterns without a range form use it.

Every function takes q, k, v of shape (B, H, N, D), a `LayerPlan` (one `HeadSpec` or None per
head) and the batch's `PatternContext`. Learned heads attend every non-padding key (padding
queries too, as in BERT). Pattern heads attend their pattern's keys; padding queries and rows with
no allowed key output zero. Every path first checks its inputs and zeroes the padding rows of q,
k and v (inputs.py).
"""

from __future__ import annotations

import torch

from attnsum.kernels.reference import dense_masked_attention

from .inputs import all_heads, check_inputs, clear_padding
from .patterns import PatternContext, dense_mask
from .plan import LayerPlan, head_kind


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


def head_kinds(plan: LayerPlan, device) -> torch.Tensor:
    """(H,) int32: each head's `HeadKind` (plan.head_kind)."""
    return torch.tensor([head_kind(s) for s in plan], dtype=torch.int32, device=device)


def reference_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None,
                        upcast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference: (out (B, H, N, D), probs (B, H, N, N), fp32 if upcast)."""
    check_inputs(q, k, v, plan, ctx)
    q, k = all_heads(q, k, plan, v.shape[1])
    q, k, v = clear_padding(q, k, v, ctx)
    return dense_masked_attention(q, k, v, layer_allowed(plan, ctx), head_kinds(plan, q.device), scale,
                         upcast)
