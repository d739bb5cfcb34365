"""The served model's matrix products on CPU through oneDNN with each weight packed once.

`torch.nn.functional.linear` on CPU hands oneDNN a plain weight, which it lays out in its
blocked format on every call; a weight packed at load (`_reorder_linear_weight`) skips that, and
the feed-forward GELU can run on the product's fp32 result inside the same call (a post-op)
instead of as a pass of its own over a (tokens x 1,536) tensor. Both are the calls PyTorch's
compiler emits for frozen CPU models (`torch.ops.mkldnn._linear_pointwise`). bf16 products give
`F.linear`'s bits; fp32 ones use oneDNN's kernel instead of MKL's, which rounds differently (a few
units in the last place). Measured in docs/results.md ("Packed weights").

Served models only (`prepare_for_serving`, attnsum/summarizer.py): no autograd, and a packed
model no longer matches its checkpoint's parameters. Where this build or CPU has no such op
(`packed_linear_works` is False), Linear layers stay as they are.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn


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


class PackedLinear(nn.Module):
    """An inference-only `nn.Linear` whose weight oneDNN packed once, optionally followed by the
    exact (erf) GELU as the product's post-op. Inputs are cast to the weight's dtype (an fp32
    residual stream meeting bf16 weights, as autocast would)."""

    def __init__(self, linear: nn.Linear, gelu: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = linear.weight.dtype
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.attr, self.algorithm = ("gelu", "none") if gelu else ("none", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(self.dtype)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, self.attr, [],
                                               self.algorithm)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.attr}"


def pack_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` by a `PackedLinear` of its weight, and fold the
    exact GELU of BERT's feed-forward blocks (an `intermediate` with `dense` and an
    `intermediate_act_fn`) into its product. Returns the number of layers packed (0 where
    `packed_linear_works` is False for their dtype)."""
    from transformers.activations import GELUActivation

    count = 0
    for parent in list(module.modules()):
        act = getattr(parent, "intermediate_act_fn", None)
        gelu = isinstance(act, GELUActivation) and act.act is F.gelu  # exact GELU, not tanh
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or not packed_linear_works(child.weight.dtype):
                continue
            fuse = gelu and name == "dense"
            setattr(parent, name, PackedLinear(child, gelu=fuse))
            if fuse:
                parent.intermediate_act_fn = nn.Identity()
            count += 1
    return count
