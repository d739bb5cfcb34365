"""Adapter from head plans and pattern contexts to the fused Triton kernel (imported when first
used, so the tables can be built where Triton is absent: work.py)."""

from __future__ import annotations

import torch

from attnsum.kernels.tables import RangeTables

from .inputs import all_heads, check_inputs, clear_padding
from .patterns import PatternContext, PatternError
from .plan import LayerPlan
from .reference import head_kinds
from .registry import get_pattern

ALL = "__all__"  # the table of learned heads: every valid key


def _all_keys(ctx: PatternContext):
    B, N = ctx.shape
    lengths = ctx.valid.sum(1)
    pos = torch.arange(N, device=ctx.valid.device)
    if not torch.equal(ctx.valid, pos[None, :] < lengths[:, None]):
        raise PatternError("the fused kernel needs right padding (valid tokens first)")
    lo = torch.zeros(B, N, dtype=torch.int32, device=pos.device)
    return pos.expand(B, N), lo, lengths[:, None].expand(B, N).int(), torch.zeros_like(lo)


def table_of(spec) -> str:
    """The name of the table a head reads: its pattern's, or ALL for a learned head."""
    return ALL if spec is None else spec.pattern


def layer_tables(plan: LayerPlan, ctx: PatternContext) -> tuple[list[str], RangeTables]:
    """The range tables a layer's heads read (memoized per batch: layers with the same
    patterns share them), and the table names in order."""
    names = [ALL] + sorted({s.pattern for s in plan if s is not None})

    def build():
        B, N = ctx.shape
        parts = []
        for name in names:
            if name == ALL:
                parts.append(_all_keys(ctx))
                continue
            r = ctx.ranges(get_pattern(name))
            perm = r.perm if r.perm is not None else torch.arange(N, device=r.lo.device).expand(B, N)
            parts.append((perm, r.lo, r.hi, r.exclude_self))
        return RangeTables(*(torch.stack([p[i] for p in parts]) for i in range(4)))

    return names, ctx.memo(("fused-tables", tuple(names)), build)


def head_tables(plan: LayerPlan, ctx: PatternContext, device) -> tuple[torch.Tensor, torch.Tensor,
                                                                         RangeTables]:
    """What the fused kernel takes for a layer: each head's kind and table index ((H,) int32)
    and the tables, built once per batch for each plan of a layer (memoized in `ctx`)."""
    names, tables = layer_tables(plan, ctx)

    def build():
        return (head_kinds(plan, device),
                torch.tensor([names.index(table_of(s)) for s in plan], dtype=torch.int32,
                             device=device))

    return (*ctx.memo(("fused-heads", plan, str(device)), build), tables)


def fused_layer_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None
                          ) -> torch.Tensor:
    """(B, H, N, D) -> (B, H, N, D) through one launch of the fused kernel (forward and
    backward). Every pattern in `plan` must have a range form."""
    from attnsum.kernels.fused import fused_attention

    for s in plan:
        if s is not None and not s.pat.has_ranges:
            raise PatternError(f"pattern {s.pattern!r} has no range form: use backend 'torch'")
    check_inputs(q, k, v, plan, ctx)
    q, k = all_heads(q, k, plan, v.shape[1])
    q, k, v = clear_padding(q, k, v, ctx)
    kinds, tab, tables = head_tables(plan, ctx, q.device)
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        # On CPU the kernel runs under Triton's interpreter (numpy), which has fp16 but no bf16
        # arithmetic: bf16 is computed in fp32 and handed back in bf16 (autograd casts the
        # gradients back the same way); fp16 runs as it is, so its casts in the kernels run.
        return fused_attention(q.float(), k.float(), v.float(), kinds, tab, tables, scale
                               ).to(q.dtype)
    return fused_attention(q, k, v, kinds, tab, tables, scale)
