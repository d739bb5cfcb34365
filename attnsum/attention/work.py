"""The work model: what each head of a plan costs next to a dense head, counted on CPU from the
batch's range tables (deterministic, no GPU, no timing). Per head and batch:

- ``cell_fraction``: allowed (query, key) pairs / (B N^2), what an ideal sparse kernel computes;
- ``work_fraction``: (query block, key block) tiles the fused kernel visits / all tiles, from the
  block tables it reads (kernels/tables.py; 64 x 64 by default, as the kernel launches on GPUs);
  a synthesized head visits the same tiles but skips QK^T and the softmax;
- ``flex_tile_fraction``: 128 x 128 tiles in natural order holding at least one allowed cell,
  what a FlexAttention BlockMask keeps.

The speedup a layer can reach over dense attention (same kernel quality) is bounded by
1 / mean work fraction over its heads: `layer_bound`.
"""

from __future__ import annotations

import torch

from .patterns import PatternContext
from .plan import LayerPlan, head_kind
from .triton_path import layer_tables, table_of

FLEX_BLOCK = 128  # FlexAttention's default BlockMask block


def _allowed_rows(mod, ctx: PatternContext, rows: torch.Tensor) -> torch.Tensor:
    """(B, len(rows), N) bool: the keys each of `rows` may attend under the full predicate
    `mod` (None for a learned head: the valid keys)."""
    B, N = ctx.shape
    if mod is None:
        return ctx.valid[:, None, :].expand(B, len(rows), N)
    b = torch.arange(B, device=rows.device)[:, None, None]
    q = rows[None, :, None]
    kv = torch.arange(N, device=rows.device)[None, None, :]
    h = torch.zeros((), dtype=torch.long, device=rows.device)
    return mod(b, h, q, kv).expand(B, len(rows), N)


def flex_tile_fraction(spec, ctx: PatternContext, block: int = FLEX_BLOCK) -> float:
    """Fraction of natural-order `block` x `block` tiles with an allowed cell; built one row of
    tiles at a time (memory O(B block N))."""
    B, N = ctx.shape
    nt = -(-N // block)
    mod = None if spec is None else spec.pat.mask_mod(ctx)
    kept = 0
    for start in range(0, N, block):
        rows = torch.arange(start, min(start + block, N), device=ctx.valid.device)
        cells = _allowed_rows(mod, ctx, rows).any(1)  # (B, N): keys some row of the tile allows
        cells = torch.nn.functional.pad(cells, (0, nt * block - N))
        kept += int(cells.view(B, nt, block).any(-1).sum())
    return kept / (B * nt * nt)


def head_work(plan: LayerPlan, ctx: PatternContext, block_m: int = 64, block_n: int = 64,
              flex_block: int | None = FLEX_BLOCK) -> list[dict]:
    """One dict per head: kind ("learned", "mask", "synth"), pattern, cell_fraction,
    work_fraction, flex_tile_fraction (left out when `flex_block` is None). Every pattern of
    `plan` needs a range form."""
    B, N = ctx.shape
    names, tables = layer_tables(plan, ctx)
    blocks = tables.blocks(block_m, block_n)
    nqb, nkb = blocks.kb_start.shape[-1], -(-N // block_n)
    visited = (blocks.kb_end - blocks.kb_start).long().sum((1, 2)).double() / (B * nqb * nkb)
    counts = (tables.hi.long() - tables.lo.long() - tables.excl.long()).clamp_min(0)
    cells = counts.sum((1, 2)).double() / (B * N * N)  # (T,); learned rows: every valid key
    flex = ({} if flex_block is None
            else {spec: flex_tile_fraction(spec, ctx, flex_block) for spec in set(plan)})
    out = []
    for spec in plan:
        t = names.index(table_of(spec))
        out.append({"kind": head_kind(spec).name.lower(),
                    "pattern": "" if spec is None else spec.pattern,
                    "cell_fraction": float(cells[t]), "work_fraction": float(visited[t])})
        if spec in flex:
            out[-1]["flex_tile_fraction"] = flex[spec]
    return out


def layer_bound(work: list[dict]) -> float:
    """The speedup over dense attention that the tiles visited allow: 1 / mean work fraction."""
    return len(work) / sum(w["work_fraction"] for w in work)
