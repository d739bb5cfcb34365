"""Hugging Face integration: BERT-family models of transformers 5.x run with a head plan.

    model = BertModel.from_pretrained(path)
    apply_plan(model, HeadPlan.parse("paper", L, H))       # selects attn_implementation "attnsum"
    ctx = PatternContext.from_bertsum(input_ids, attention_mask)
    out = model(input_ids, attention_mask=attention_mask, pattern_context=ctx)

The attention function receives q, k, v as (B, H, N, D) and returns (B, N, H, D). With
``output_attentions=True`` it runs the dense reference and returns the (B, H, N, N) maps (for
analysis); otherwise the fast path of `patterned_attention` (``model.config.attnsum_backend``:
auto, triton, torch or reference). A module attribute ``attnsum_gates`` of shape (H,) scales
each head's output (head importance). Attention-probability dropout is not applied (the plans
target inference and students trained with hidden dropout only).
"""

from __future__ import annotations

import torch

from .attention import patterned_attention, reference_attention
from .patterns import PatternContext, PatternError
from .plan import HeadPlan

NAME = "attnsum"


def attnsum_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      pattern_context: PatternContext | None = None, output_attentions=False,
                      **kwargs):
    heads = getattr(module, "attnsum_heads", None)
    B, H, N, _ = query.shape
    if heads is None:
        heads = (None,) * H
    ctx = pattern_context
    if ctx is None:
        if any(s is not None for s in heads):
            raise PatternError(f"layer {module.layer_idx} has patterned heads: call the model with "
                               "pattern_context=PatternContext.from_bertsum(input_ids, attention_mask)")
        # Learned heads only need the padding: the bidirectional mask is valid[key] on every row.
        valid = (torch.ones(B, N, dtype=torch.bool, device=query.device) if attention_mask is None
                 else attention_mask[:, 0, 0, :].bool())
        ctx = PatternContext(torch.zeros(B, N, dtype=torch.long, device=query.device), valid,
                             torch.zeros(B, N, dtype=torch.long, device=query.device))
    if output_attentions:
        out, probs = reference_attention(query, key, value, heads, ctx, scaling)
    else:
        backend = getattr(module.config, "attnsum_backend", "auto")
        out, probs = patterned_attention(query, key, value, heads, ctx, scaling, backend), None
    gates = getattr(module, "attnsum_gates", None)  # (H,) head gates for importance analysis
    if gates is not None:
        out = out * gates.view(1, -1, 1, 1).to(out.dtype)
    return out.transpose(1, 2).contiguous(), probs


def register() -> None:
    """Register the attention function and its mask function (without the latter transformers
    would drop the padding mask) under the name ``attnsum``."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, attnsum_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def self_attention_modules(model):
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "query")
            and hasattr(m, "key")]
    return sorted(mods, key=lambda m: m.layer_idx)


def apply_plan(model, plan: HeadPlan, backend: str = "auto"):
    """Give every self-attention layer of `model` its row of `plan` and switch the model to the
    ``attnsum`` attention implementation. The plan is kept in ``config.attnsum_plan`` (JSON)."""
    register()
    cfg = model.config
    if (plan.num_layers, plan.num_heads) != (cfg.num_hidden_layers, cfg.num_attention_heads):
        raise PatternError(f"the plan is for {plan.num_layers} layers x {plan.num_heads} heads, the "
                           f"model has {cfg.num_hidden_layers} x {cfg.num_attention_heads}")
    mods = self_attention_modules(model)
    if len(mods) != plan.num_layers:
        raise PatternError(f"found {len(mods)} self-attention layers, the plan has {plan.num_layers}")
    for m in mods:
        m.attnsum_heads = plan.layer(m.layer_idx)
    cfg.attnsum_plan = plan.to_dict()
    cfg.attnsum_backend = backend
    model.set_attn_implementation(NAME)
    return model
