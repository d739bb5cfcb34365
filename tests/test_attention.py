"""The dense reference against a per-element loop; the fast PyTorch path against the reference,
forward and every gradient, on awkward shapes."""

import math

import pytest
import torch
from helpers import CLS_ID, MIXED, check_padding_isolation, make_batch

from attnsum.attention import (
    PatternContext,
    get_pattern,
    layer_allowed,
    patterned_attention,
    reference_attention,
    torch_attention,
)
from attnsum.attention.patterns import PatternError
from attnsum.attention.plan import HeadPlan


def test_reference_against_per_element_loop():
    q, k, v, ctx = make_batch(2, 7, H=9, D=4)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    out, probs = reference_attention(q, k, v, plan, ctx)
    allowed = layer_allowed(plan, ctx)
    B, H, N, D = q.shape
    pad = ~ctx.valid[:, None, :, None]  # the contract: padding rows of q, k, v count as zero
    q, k, v = (x.masked_fill(pad, 0.0) for x in (q, k, v))
    for b in range(B):
        for h in range(H):
            for i in range(N):
                keys = [j for j in range(N) if allowed[b, h, i, j]]
                want = torch.zeros(D)
                if keys:
                    if plan[h] is not None and plan[h].mode == "synth":
                        w = [1.0 / len(keys)] * len(keys)
                    else:
                        s = [float(q[b, h, i] @ k[b, h, j]) / math.sqrt(D) for j in keys]
                        m = max(s)
                        e = [math.exp(x - m) for x in s]
                        w = [x / sum(e) for x in e]
                    for wj, j in zip(w, keys, strict=True):
                        want += wj * v[b, h, j]
                        assert probs[b, h, i, j].item() == pytest.approx(wj, abs=1e-6)
                torch.testing.assert_close(out[b, h, i], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("N", [
    1,    # a single token: every pattern but the learned head is empty
    17,   # not a multiple of the 64-query block
    113,  # spans two blocks, with padding in document 1
    300,  # several blocks and windows
])
@pytest.mark.parametrize("plan_text", [
    MIXED,
    "*:0=window:2/mask; *:1=window:5/synth; *:2=sent-cls/synth; *:3=sent-cls/mask; "
    "*:4=offset:-2/synth",  # the other built-ins (and learned heads)
])
def test_fast_path_matches_reference_forward_and_backward(N, plan_text):
    q, k, v, ctx = make_batch(3, N)
    plan = HeadPlan.parse(plan_text, 1, 9).layer(0)
    for t in (q, k, v):
        t.requires_grad_(True)
    ref = reference_attention(q, k, v, plan, ctx)[0]
    out = torch_attention(q, k, v, plan, ctx)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert torch.isfinite(out).all()
    grad_out = torch.randn_like(ref)  # one shared upstream gradient
    g_ref = torch.autograd.grad(ref, (q, k, v), grad_out)
    g_out = torch.autograd.grad(out, (q, k, v), grad_out)
    for name, a, b in zip("qkv", g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=f"d{name}")


def test_rows_without_keys_are_zero_not_nan():
    q, k, v, ctx = make_batch(2, 5)
    ctx.valid[1] = False  # a document made only of padding
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    for fn in (lambda: reference_attention(q, k, v, plan, ctx)[0],
               lambda: torch_attention(q, k, v, plan, ctx)):
        out = fn()
        assert torch.isfinite(out).all()
        assert torch.all(out[1] == 0)


def test_plan_changes_exactly_the_patterned_heads():
    q, k, v, ctx = make_batch(2, 40, H=6)
    learned = torch_attention(q, k, v, HeadPlan.none(1, 6).layer(0), ctx)
    plan = HeadPlan.parse("0:1=sent/mask; 0:4=next/synth", 1, 6).layer(0)
    out = torch_attention(q, k, v, plan, ctx)
    for h in range(6):
        same = torch.allclose(out[:, h], learned[:, h], atol=1e-6)
        assert same == (h not in (1, 4)), h


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_fast_path(dtype):
    q, k, v, ctx = make_batch(2, 70, dtype=dtype)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    ref = reference_attention(q, k, v, plan, ctx)[0].float()
    out = torch_attention(q, k, v, plan, ctx).float()
    # The tolerance rule (attnsum/attention/__init__.py): at most 2x the error of the same
    # computation run in the low precision, + epsilon.
    ref16 = reference_attention(q, k, v, plan, ctx, upcast=False)
    err16 = (ref16[0].float() - ref).abs().max().item()
    assert (out - ref).abs().max().item() <= 2 * err16 + 1e-3


def test_bad_shapes_and_backend():
    q, k, v, ctx = make_batch(2, 8)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    with pytest.raises(PatternError, match="8 heads"):
        torch_attention(q, k, v, plan[:8], ctx)
    with pytest.raises(PatternError, match="pattern context"):
        torch_attention(q[:1], k[:1], v[:1], plan, ctx)
    with pytest.raises(ValueError, match="backend"):
        patterned_attention(q, k, v, plan, ctx, backend="cuda")
    # int64 inputs would be truncated silently; mixed dtypes would fail deep inside a kernel
    with pytest.raises(PatternError, match="one floating dtype"):
        torch_attention(q.long(), k.long(), v.long(), plan, ctx)
    with pytest.raises(PatternError, match="one floating dtype"):
        patterned_attention(q.half(), k, v, plan, ctx, backend="reference")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_nan_and_inf_in_padding_rows_stay_there(backend):
    q, k, v, ctx = make_batch(3, 40)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    assert not ctx.valid.all()
    check_padding_isolation(lambda *x: patterned_attention(*x, plan, ctx, backend=backend),
                            q, k, v, ctx)


def test_synthesized_heads_are_accurate_on_values_far_from_zero():
    # pairs of equal tokens: each matching-token head averages two values of ~10 +- 1
    g = torch.Generator().manual_seed(0)
    N = 150
    ids = torch.arange(N).div(2, rounding_mode="floor")[torch.randperm(N, generator=g)][None]
    ctx = PatternContext.from_spans(ids + 1000, None, [[(0, 60), (60, N)]])
    v = 10 + torch.randn(1, 2, N, 16, generator=g)
    plan = HeadPlan.parse("*:0=match/synth; *:1=sent/synth", 1, 2).layer(0)
    out = torch_attention(v, v, v, plan, ctx)
    allowed = layer_allowed(plan, ctx).double()
    want = (allowed @ v.double()) / allowed.sum(-1, keepdim=True)  # plain fp64 averages
    assert (out.double() - want).abs().max() < 5e-6


def test_range_tables_are_checked_where_they_are_built(monkeypatch):
    from attnsum.attention.patterns import Pattern, Ranges

    ctx = PatternContext.from_bertsum(torch.tensor([[101, 5, 6, 102]]), None, cls_id=CLS_ID)
    nxt = get_pattern("next")

    def bad(**change):
        r = nxt.ranges(ctx)
        fields = {"perm": r.perm, "lo": r.lo, "hi": r.hi, "exclude_self": r.exclude_self, **change}
        return Pattern("bad", nxt.predicate, lambda c: Ranges(**fields))

    with pytest.raises(PatternError, match="exclude_self is set on a row"):
        ctx.ranges(bad(exclude_self=torch.tensor([[True, False, False, False]])))
    with pytest.raises(PatternError, match="0 <= lo <= hi <= N"):
        ctx.ranges(bad(hi=torch.tensor([[2, 3, 4, 5]], dtype=torch.int32)))
    with pytest.raises(PatternError, match="int32"):
        ctx.ranges(bad(lo=torch.zeros(1, 4, dtype=torch.long)))
    with pytest.raises(PatternError, match="shape"):
        ctx.ranges(bad(lo=torch.zeros(1, 3, dtype=torch.int32)))
    wrong = bad(hi=torch.tensor([[2, 3, 4, 4]], dtype=torch.int32))  # row 0 also allows key 2
    ctx.ranges(wrong)  # the cheap checks pass...
    monkeypatch.setenv("ATTNSUM_DEBUG", "1")
    fresh = PatternContext.from_bertsum(torch.tensor([[101, 5, 6, 102]]), None, cls_id=CLS_ID)
    with pytest.raises(PatternError, match="same keys as the pattern"):
        fresh.ranges(wrong)  # ...the full check does not
    with pytest.raises(PatternError, match="permutation"):
        fresh.ranges(bad(perm=torch.zeros(1, 4, dtype=torch.long)))
