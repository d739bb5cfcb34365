"""Dense reference attention: the ground truth every fast path is tested against.

Plain matmul + masked_fill + softmax on (B, H, N, N), upcast to fp32.
"""

from __future__ import annotations

import math

import torch

from .configs import HeadKind


def dense_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                           kinds: torch.Tensor, scale: float | None = None, upcast: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a layer whose heads are learned, masked or synthesized.

    Args:
        q, k, v: (B, H, N, D) queries, keys, values.
        allowed: (B, H, N, N) bool, or broadcastable to it; allowed[b, h, i, j] says query i of
            head h may attend key j. A row with no allowed key gives a zero output row.
        kinds: (H,) `HeadKind` values; a synthesized head ignores q and k and attends
            uniformly over its allowed keys. Other heads take a softmax of q k^T * scale over
            allowed keys.
        scale: defaults to 1 / sqrt(D).
        upcast: compute in fp32 and return the output in q's dtype.

    Returns:
        out: (B, H, N, D); probs: (B, H, N, N) attention probabilities (fp32 if upcast).
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    allowed = allowed.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    any_key = allowed.any(-1, keepdim=True)  # (B, H, N, 1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    scores = torch.where(any_key, scores, torch.zeros_like(scores))  # no NaN on empty rows
    learned = torch.softmax(scores, dim=-1) * any_key
    uniform = allowed.to(learned.dtype) / allowed.sum(-1, keepdim=True).clamp_min(1)
    synth = (torch.as_tensor(kinds, device=q.device) == HeadKind.SYNTH).view(1, -1, 1, 1)
    probs = torch.where(synth, uniform, learned)
    out = torch.matmul(probs, v)
    return out.to(dtype), probs
