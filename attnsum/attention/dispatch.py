"""The one entry point for a layer's attention: picks the fused Triton kernel, the PyTorch path
or the dense reference."""

from __future__ import annotations

import torch

from attnsum.config import BACKENDS, check_choice

from .patterns import PatternContext
from .plan import LayerPlan
from .reference import reference_attention
from .torch_path import torch_attention


def patterned_attention(q, k, v, plan: LayerPlan, ctx: PatternContext, scale: float | None = None,
                        backend: str = "auto") -> torch.Tensor:
    """One layer's attention under `plan`: (B, H, N, D) -> (B, H, N, D).

    backend: ``auto`` (the fused Triton kernel on CUDA in bf16 or fp16 when available, else the
    PyTorch path), ``triton``, ``torch``, or ``reference`` (dense, materializes (B, H, N, N)).
    """
    check_choice("attention backend", backend, BACKENDS)
    if backend == "reference":
        return reference_attention(q, k, v, plan, ctx, scale)[0]
    if backend == "triton" or (backend == "auto" and q.is_cuda and q.dtype != torch.float32
                               and _triton_ready(plan)):
        from .triton_path import fused_layer_attention

        return fused_layer_attention(q, k, v, plan, ctx, scale)
    return torch_attention(q, k, v, plan, ctx, scale)


def _triton_ready(plan: LayerPlan) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    # Learned-only layers go to SDPA; the kernel earns its keep on patterned heads.
    return any(s is not None for s in plan) and all(s is None or s.pat.has_ranges for s in plan)
