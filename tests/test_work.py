"""The work model against hand counts and against dense masks."""

import pytest
import torch
from helpers import CLS_ID

from attnsum.attention import HeadPlan, PatternContext, layer_allowed
from attnsum.attention.work import flex_tile_fraction, head_work, layer_bound


def _one_sentence(N, B=1):
    ids = torch.randint(1000, 1040, (B, N), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 101
    return PatternContext.from_bertsum(ids, torch.ones(B, N, dtype=torch.long), cls_id=CLS_ID)


def test_hand_counted_next_token_and_learned_heads():
    ctx = _one_sentence(256)
    work = head_work(HeadPlan.parse("*:0=next/synth", 1, 2).layer(0), ctx)
    nxt, learned = work
    # Query blocks of 64 rows [64i, 64i + 64) attend keys [64i + 1, 64i + 65): two key blocks,
    # except the last (its last row has no next token): 2 + 2 + 2 + 1 of 16 tiles.
    assert nxt["work_fraction"] == pytest.approx(7 / 16)
    assert nxt["cell_fraction"] == pytest.approx(255 / 256 ** 2)
    # 128-tiles in natural order: (0, 0), (0, 1), (1, 1) of 4.
    assert nxt["flex_tile_fraction"] == pytest.approx(3 / 4)
    assert learned == {"kind": "learned", "pattern": "", "cell_fraction": 1.0,
                       "work_fraction": 1.0, "flex_tile_fraction": 1.0}
    assert layer_bound(work) == pytest.approx(2 / (1 + 7 / 16))


@pytest.mark.parametrize("plan", ["paper", "*:0=match-self/mask; *:1=sent/synth; *:2=offset:3/mask"])
def test_cells_and_flex_tiles_equal_the_dense_masks(plan):
    ids = torch.randint(1000, 1030, (2, 300), generator=torch.Generator().manual_seed(1))
    ids[:, ::23] = 101  # sentences
    am = torch.ones(2, 300, dtype=torch.long)
    am[1, 220:] = 0  # padding
    ctx = PatternContext.from_bertsum(ids * am, am, cls_id=CLS_ID)
    layer = HeadPlan.parse(plan, 1, 4).layer(0)
    dense = layer_allowed(layer, ctx)  # (B, H, N, N)
    for h, w in enumerate(head_work(layer, ctx, flex_block=32)):
        assert w["cell_fraction"] == pytest.approx(dense[:, h].float().mean().item())
        tiles = torch.nn.functional.pad(dense[:, h], (0, 20, 0, 20)).view(2, 10, 32, 10, 32)
        assert w["flex_tile_fraction"] == pytest.approx(tiles.any(-1).any(-2).float().mean().item())
        assert w["cell_fraction"] <= w["work_fraction"] <= 1.0
    assert flex_tile_fraction(None, ctx, 32) == pytest.approx(
        torch.nn.functional.pad(ctx.valid[:, None, :].expand(2, 300, 300), (0, 20, 0, 20))
        .view(2, 10, 32, 10, 32).any(-1).any(-2).float().mean().item())
