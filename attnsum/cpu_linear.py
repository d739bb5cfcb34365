"""The served model's matrix products on CPU through oneDNN with each weight packed once, and
the residual add and LayerNorm after each block's output product in one pass.

`torch.nn.functional.linear` on CPU hands oneDNN a plain weight, which it lays out in its
blocked format on every call; a weight packed at load (`_reorder_linear_weight`) skips that, and
the feed-forward GELU can run on the product's fp32 result inside the same call (a post-op)
instead of as a pass of its own over a (tokens x 1,536) tensor; query, key and value are one
product (one call, one cast of the input). Both are the calls PyTorch's
compiler emits for frozen CPU models (`torch.ops.mkldnn._linear_pointwise`). bf16 products give
`F.linear`'s bits; fp32 ones use oneDNN's kernel instead of MKL's, which rounds differently (a few
units in the last place). Measured in docs/results.md ("Packed weights").

BERT's output blocks (`BertSelfOutput`, `BertOutput`: product, residual add, LayerNorm) become
`AddNorm`: the add and the LayerNorm are one pass of a CPU kernel (kernels/cpu_kernels.c) over
the fp32 residual stream, which also writes the bf16 copy the next product reads instead of
casting the stream again. Measured in docs/results.md ("CPU kernels").

Served models only (`prepare_for_serving`, attnsum/summarizer.py): no autograd, and a packed
model no longer matches its checkpoint's parameters. Where this build or CPU has no such op
(`packed_linear_works` is False), Linear layers stay as they are.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from attnsum.kernels import cpu_kernels


@cache
def packed_linear_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed products run here in `dtype` and agree with `F.linear` (a small
    product with GELU, checked once per dtype)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g).to(dtype) for s in ((5, 16), (8, 16), (8,)))
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "gelu", [], "none")
    except RuntimeError:
        return False
    want = F.gelu(F.linear(x.float(), w.float(), b.float()))
    return y.dtype == dtype and torch.allclose(y.float(), want, rtol=2e-2, atol=2e-2)


BF16_COPY = "attnsum_bf16_copy"  # the attribute of an fp32 tensor that holds its bf16 copy


class PackedLinear(nn.Module):
    """An inference-only `nn.Linear` whose weight oneDNN packed once, optionally followed by the
    exact (erf) GELU as the product's post-op. Inputs are cast to the weight's dtype (an fp32
    residual stream meeting bf16 weights, as autocast would)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.bias = None if bias is None else bias.detach()
        self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copy = getattr(x, BF16_COPY, None)  # written beside x by `AddNorm`
        if copy is not None and self.dtype == torch.bfloat16:
            x = copy
        rows = x.reshape(-1, x.shape[-1]).to(self.dtype)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, self.attr, [],
                                               self.algorithm)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.attr}"


class _SharedProduct:
    """The packed product of several Linear layers that read the same input (BERT's query, key
    and value), computed once for all of them: one call and one cast of the input instead of
    three. The last result is kept until its last reader takes it; a part called on another
    input (checked by identity) computes the product afresh, so the result never depends on
    the order of calls."""

    def __init__(self, linears: list[nn.Linear]):
        bias = None
        if any(lin.bias is not None for lin in linears):  # a layer without one adds zeros
            bias = torch.cat([lin.weight.new_zeros(lin.out_features) if lin.bias is None
                              else lin.bias.detach() for lin in linears])
        self.product = PackedLinear(torch.cat([lin.weight.detach() for lin in linears]), bias)
        self.sizes = [lin.out_features for lin in linears]
        self.last: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        last = self.last
        if last is None or last[0] is not x:
            last = (x, self.product(x).split(self.sizes, dim=-1))
        self.last = None if index == len(self.sizes) - 1 else last
        return last[1][index]


class SharedPart(nn.Module):
    """One Linear layer's columns of a `_SharedProduct`."""

    def __init__(self, shared: _SharedProduct, index: int):
        super().__init__()
        self.shared, self.index = shared, index
        if index == 0:  # the product as a submodule once, where module walks and hooks find it
            self.product = shared.product
        self.in_features = shared.product.in_features
        self.out_features = shared.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.part(x, self.index)


def pack_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` by a `PackedLinear` of its weight, BERT's
    query, key and value by the parts of one packed product (`_SharedProduct`), and fold the
    exact GELU of BERT's feed-forward blocks (an `intermediate` with `dense` and an
    `intermediate_act_fn`) into its product. Returns the number of Linear layers replaced (0
    where `packed_linear_works` is False for their dtype)."""
    from transformers.activations import GELUActivation

    count = 0
    for parent in list(module.modules()):
        qkv = [getattr(parent, name, None) for name in ("query", "key", "value")]
        if all(isinstance(x, nn.Linear) and packed_linear_works(x.weight.dtype) for x in qkv) \
                and len({(x.in_features, x.weight.dtype) for x in qkv}) == 1:
            shared = _SharedProduct(qkv)
            for i, name in enumerate(("query", "key", "value")):
                setattr(parent, name, SharedPart(shared, i))
            count += 3
        act = getattr(parent, "intermediate_act_fn", None)
        gelu = isinstance(act, GELUActivation) and act.act is F.gelu  # exact GELU, not tanh
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or not packed_linear_works(child.weight.dtype):
                continue
            fuse = gelu and name == "dense"
            setattr(parent, name, PackedLinear(child.weight, child.bias, gelu=fuse))
            if fuse:
                parent.intermediate_act_fn = nn.Identity()
            count += 1
    return count


class AddNorm(nn.Module):
    """A BERT output block at inference (eval: no dropout): its product, then LayerNorm(product
    + residual) in one pass of the CPU kernel, with the result's bf16 copy for the next product
    when the products run in bf16. A residual stream that is not fp32 takes PyTorch's ops."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.dense, self.LayerNorm = block.dense, block.LayerNorm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        y = self.dense(hidden_states)
        norm = self.LayerNorm
        if input_tensor.dtype != torch.float32 or y.shape != input_tensor.shape:
            return norm(y + input_tensor)
        out, copy = cpu_kernels.add_layer_norm(y, input_tensor, norm.weight, norm.bias, norm.eps,
                                               bf16_copy=y.dtype == torch.bfloat16)
        if copy is not None:
            setattr(out, BF16_COPY, copy)
        return out


def fuse_add_norms(module: nn.Module) -> int:
    """Replace BERT's output blocks under `module` (`BertSelfOutput`, `BertOutput`) by `AddNorm`
    where the CPU kernels are built. Returns the number replaced."""
    from transformers.models.bert.modeling_bert import BertOutput, BertSelfOutput

    if not cpu_kernels.available():
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (BertSelfOutput, BertOutput):
                setattr(parent, name, AddNorm(child))
                count += 1
    return count
