"""The served model's CPU kernels (kernels/cpu_kernels.c, kernels/cpu_kernels.py): masked heads
against the dense reference and the PyTorch path they replace at inference, the residual add and
LayerNorm against torch's, and the fallback without a compiler."""

import platform

import pytest
import torch
from helpers import MIXED, make_batch, poisoned_padding

from attnsum.attention import reference_attention, torch_attention
from attnsum.attention.plan import HeadPlan
from attnsum.cpu_linear import BF16_COPY, AddNorm, PackedLinear, packed_linear_works
from attnsum.kernels import cpu_kernels

OTHERS = ("*:0=window:2/mask; *:1=sent-cls/mask; *:2=offset:-2/mask; *:3=match-self/mask; "
          "*:4=match/mask")


# The kernels' code paths: this CPU's (AVX-512 and its bf16 products where it has them), AVX2
# only, and no AVX (the portable loops), each built for that instruction set.
MARCHES = ["native", "x86-64-v3", "x86-64-v2"] if platform.machine() == "x86_64" else ["native"]


@pytest.fixture(params=MARCHES)
def kernel(request, monkeypatch):
    """Switch the kernels on (built for one instruction set, once, then cached) or off."""
    monkeypatch.setenv(cpu_kernels.MARCH_ENV, request.param)

    def use(on: bool) -> bool:
        monkeypatch.setenv(cpu_kernels.DISABLE_ENV, "1" if on else "0")
        cpu_kernels._library.cache_clear()
        return cpu_kernels.available()

    yield use
    cpu_kernels._library.cache_clear()


def _both(kernel, *args):
    """The fast path's output with the kernel, then without it (no gradient: inference)."""
    with torch.no_grad():
        if not kernel(True):
            pytest.skip("no C compiler: the kernel is not built here")
        with_kernel = torch_attention(*args)
        kernel(False)
        return with_kernel, torch_attention(*args)


@pytest.mark.parametrize("N", [1, 17, 113, 300])
@pytest.mark.parametrize("plan_text", [MIXED, OTHERS])
def test_kernel_matches_reference_in_fp32(kernel, N, plan_text):
    q, k, v, ctx = make_batch(3, N)
    plan = HeadPlan.parse(plan_text, 1, 9).layer(0)
    ref = reference_attention(q, k, v, plan, ctx)[0]
    out, torch_path = _both(kernel, q, k, v, plan, ctx)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(torch_path, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("D", [32, 24])  # 24: not a whole number of vector registers
def test_kernel_in_bf16_is_no_less_accurate_than_the_torch_path(kernel, D):
    q, k, v, ctx = make_batch(4, 200, D=D, dtype=torch.bfloat16)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    ref = reference_attention(q, k, v, plan, ctx)[0].float()  # fp32 arithmetic, bf16 inputs
    out, torch_path = _both(kernel, q, k, v, plan, ctx)
    assert out.dtype == torch.bfloat16
    err, err_torch = ((x.float() - ref).abs().max().item() for x in (out, torch_path))
    # fp32 inside, one rounding to bf16 at the end: at most half a bf16 step of the largest output
    assert err <= ref.abs().max().item() * 2.0**-8
    assert err <= err_torch


def test_a_documents_output_does_not_depend_on_its_batch(kernel):
    q, k, v, ctx = make_batch(3, 120, D=32, dtype=torch.bfloat16)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    if not kernel(True):
        pytest.skip("no C compiler: the kernel is not built here")
    with torch.no_grad():
        batch = torch_attention(q, k, v, plan, ctx)
        for b in range(3):
            alone = type(ctx)(ctx.token_ids[b:b + 1], ctx.valid[b:b + 1], ctx.sentence_ids[b:b + 1])
            one = torch_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], plan, alone)
            assert torch.equal(one[0], batch[b]), b


def test_nan_and_inf_in_padding_rows_reach_no_valid_row(kernel):
    q, k, v, ctx = make_batch(3, 40)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    clean, _ = _both(kernel, q, k, v, plan, ctx)
    kernel(True)
    with torch.no_grad():
        out = torch_attention(*poisoned_padding(q, k, v, ctx), plan, ctx)
    valid = ctx.valid[:, None, :, None].expand_as(out)
    assert torch.equal(out[valid], clean[valid]) and torch.isfinite(out[valid]).all()


def test_training_keeps_the_differentiable_path(kernel, monkeypatch):
    q, k, v, ctx = make_batch(2, 40)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    if not kernel(True):
        pytest.skip("no C compiler: the kernel is not built here")
    calls = []
    monkeypatch.setattr(cpu_kernels, "range_attention", lambda *a: calls.append(a))
    q.requires_grad_(True)
    out = torch_attention(q, k, v, plan, ctx)
    assert not calls and out.requires_grad
    torch.testing.assert_close(out, reference_attention(q, k, v, plan, ctx)[0], atol=2e-5, rtol=2e-5)


def test_without_a_working_compiler_the_torch_path_runs(kernel, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached from an earlier build
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    assert not kernel(True)
    assert "did not build" in capsys.readouterr().err
    q, k, v, ctx = make_batch(2, 30)
    plan = HeadPlan.parse(MIXED, 1, 9).layer(0)
    with torch.no_grad():
        out = torch_attention(q, k, v, plan, ctx)
    torch.testing.assert_close(out, reference_attention(q, k, v, plan, ctx)[0], atol=2e-5, rtol=2e-5)


def test_a_new_build_lands_whole_in_the_cache(kernel, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if not kernel(True):
        pytest.skip("no C compiler: the kernel is not built here")
    built = list((tmp_path / "attnsum" / "cpu-kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary file left beside it


@pytest.mark.parametrize("ydtype", [torch.float32, torch.bfloat16])
def test_add_layer_norm_is_torchs_in_one_pass(kernel, ydtype):
    if not kernel(True):
        pytest.skip("no C compiler: the kernel is not built here")
    g = torch.Generator().manual_seed(0)
    x = 3 + 2 * torch.randn(2, 37, 384, generator=g)  # a stream far from zero mean
    y = torch.randn(2, 37, 384, generator=g).to(ydtype)
    w, b = torch.randn(384, generator=g), torch.randn(384, generator=g)
    out, copy = cpu_kernels.add_layer_norm(y, x, w, b, 1e-12, bf16_copy=True)
    want = torch.nn.functional.layer_norm(y.double() + x.double(), (384,), w.double(), b.double(), 1e-12)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(copy, out.to(torch.bfloat16))  # the same rounding as torch's cast


def test_an_output_block_hands_its_bf16_copy_to_the_next_product(kernel):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertOutput

    if not kernel(True) or not packed_linear_works(torch.bfloat16):
        pytest.skip("needs the CPU kernel and oneDNN's bf16 products")
    torch.manual_seed(0)
    block = BertOutput(BertConfig(hidden_size=64, intermediate_size=96)).eval()
    block.dense.to(torch.bfloat16)
    h, x = torch.randn(3, 96).to(torch.bfloat16), torch.randn(3, 64)
    with torch.no_grad():
        want = block(h, x)
        fused = AddNorm(block)
        out = fused(h, x)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        copy = getattr(out, BF16_COPY)
        assert torch.equal(copy, out.to(torch.bfloat16))
        nxt = torch.nn.Linear(64, 8).to(torch.bfloat16)
        packed = PackedLinear(nxt.weight, nxt.bias)
        setattr(out, BF16_COPY, torch.zeros_like(copy))  # the product reads the copy, not out
        assert torch.equal(packed(out), nxt.bias.expand(3, 8))
