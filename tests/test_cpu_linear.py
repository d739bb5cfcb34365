"""Packed oneDNN products of served CPU models (attnsum/cpu_linear.py) against plain Linear
layers and the exact GELU."""

import pytest
import torch
import torch.nn.functional as F
from helpers import CLS_ID

from attnsum.attention import PatternContext
from attnsum.config import ModelConfig
from attnsum.cpu_linear import AddNorm, PackedLinear, pack_linears, packed_linear_works
from attnsum.kernels import cpu_kernels
from attnsum.model import SummarizerModel
from attnsum.precision import resolve_precision
from attnsum.summarizer import prepare_for_serving

pytestmark = pytest.mark.skipif(not packed_linear_works(torch.float32),
                                reason="this build has no oneDNN packed products")


def _linear(dtype, n_in=48, n_out=40, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, n_out).to(dtype)


def test_bf16_products_are_linear_bit_for_bit():
    if not packed_linear_works(torch.bfloat16):
        pytest.skip("no bf16 oneDNN products on this CPU")
    lin = _linear(torch.bfloat16)
    x = torch.randn(2, 37, 48).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(PackedLinear(lin.weight, lin.bias)(x), F.linear(x, lin.weight, lin.bias))


def test_fp32_products_and_the_fused_gelu_against_fp64():
    lin = _linear(torch.float32)
    x = torch.randn(5, 48)
    want = F.linear(x.double(), lin.weight.double(), lin.bias.double())
    with torch.no_grad():
        torch.testing.assert_close(PackedLinear(lin.weight, lin.bias)(x).double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(PackedLinear(lin.weight, lin.bias, gelu=True)(x).double(),
                                   F.gelu(want), rtol=1e-5, atol=1e-5)


def test_a_served_model_packs_every_encoder_product_and_scores_as_before():
    """A patterned student as served on CPU: its encoder's products packed, 4 a layer (query,
    key and value as one, the GELU of each feed-forward block inside its product), the sentence
    classifier left alone; the logits those of the same model with plain Linear layers."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 1100, (2, 40), generator=g)  # repeated ids: matching groups
    ids[:, [0, 13, 27]] = CLS_ID
    am = torch.ones_like(ids)
    am[1, 30:] = 0
    cls = torch.tensor([[0, 13, 27], [0, 13, -1]])
    seg = torch.zeros_like(ids)
    ctx = PatternContext.from_bertsum(ids, am, cls_id=CLS_ID)
    models = {}
    for pack in (False, True):
        torch.manual_seed(0)
        cfg = ModelConfig.from_preset("tiny", "paper", classifier="transformer", max_len=40)
        models[pack] = prepare_for_serving(SummarizerModel(cfg, load_pretrained=False), "cpu",
                                           resolve_precision("fp32", torch.device("cpu")), pack=pack)
    packed = [m for m in models[True].encoder.modules() if isinstance(m, PackedLinear)]
    layers = models[True].cfg.layers
    assert len(packed) == 4 * layers
    # tiny: 4 heads of 16, ffn 128; q and k of the 2 masked heads only (32 + 32), v of all 4
    assert [p.out_features for p in packed[:4]] == [32 + 32 + 64, 64, 128, 64]
    assert sum(m.attr == "gelu" for m in packed) == layers
    assert not any(isinstance(m, torch.nn.Linear) for m in models[True].encoder.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in models[True].inter.modules())
    # each layer's two residual adds and LayerNorms one pass of the CPU kernel, where it builds
    fused = sum(isinstance(m, AddNorm) for m in models[True].encoder.modules())
    assert fused == (2 * layers if cpu_kernels.available() else 0)
    with torch.no_grad():
        got, want = (models[p](ids, seg, am, cls, ctx) for p in (True, False))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_nothing_is_packed_where_the_op_does_not_work(monkeypatch):
    import attnsum.cpu_linear as cl

    monkeypatch.setattr(cl, "packed_linear_works", lambda dtype: False)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert pack_linears(model) == 0 and isinstance(model[0], torch.nn.Linear)


def test_query_key_value_as_one_product_with_and_without_biases():
    """BERT-shaped query, key, value (the key without a bias) packed as one product: each part
    is its own layer's answer, whichever input its call sees."""
    torch.manual_seed(0)
    attn = torch.nn.Module()
    attn.query, attn.value = torch.nn.Linear(48, 32), torch.nn.Linear(48, 64)
    attn.key = torch.nn.Linear(48, 32, bias=False)
    want = {n: getattr(attn, n) for n in ("query", "key", "value")}
    assert pack_linears(attn) == 3
    x, y = torch.randn(3, 48), torch.randn(3, 48)
    with torch.no_grad():
        for name, inp in (("query", x), ("key", y), ("value", x)):  # key on another input
            torch.testing.assert_close(getattr(attn, name)(inp), want[name](inp),
                                       rtol=1e-5, atol=1e-5)
