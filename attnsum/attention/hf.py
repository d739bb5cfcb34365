"""Hugging Face integration: BERT-family models of transformers 5.x run with a head plan.

    model = BertModel.from_pretrained(path)
    plan = HeadPlan.parse("paper", L, H)
    apply_plan(model, plan)                 # checks the shape, selects attn_implementation "attnsum"
    ctx = PatternContext.from_bertsum(input_ids, attention_mask, cls_id=tokenizer.cls_token_id)
    out = model(input_ids, attention_mask=attention_mask, attnsum=PlanInputs(plan, ctx))

The plan and the batch's pattern context travel as one explicit forward argument, `PlanInputs`;
transformers hands forward keyword arguments to the attention function, which takes the row of
its layer (``module.layer_idx``). The attention function receives q, k, v as (B, H, N, D) and
returns (B, N, H, D). With ``output_attentions=True`` it runs the dense reference and returns the
(B, H, N, N) maps (for analysis); otherwise the fast path of `patterned_attention`.
Attention-probability dropout is not applied (the plans target inference and students trained
with hidden dropout only).

For inference, `drop_synth_projections` cuts the Q and K projection rows that only synthesized
heads would read (they average v over their pattern): those heads' q and k are never computed.
The attention function then gets fewer q, k heads than v heads and passes them on as they are
(attention/inputs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dispatch import patterned_attention
from .patterns import PatternContext, PatternError
from .plan import HeadPlan, qk_heads
from .reference import reference_attention

NAME = "attnsum"


@dataclass
class PlanInputs:
    """What the attnsum attention needs beside q, k, v, for one forward pass.

    plan: the model's `HeadPlan`.
    ctx: the batch's `PatternContext`; may be None when every head is learned.
    backend: ``auto``, ``triton``, ``torch`` or ``reference`` (dispatch.py).
    gates: optional (L, H) tensor scaling each head's output (head importance by gates).
    """

    plan: HeadPlan
    ctx: PatternContext | None = None
    backend: str = "auto"
    gates: torch.Tensor | None = None


def _padding_context(query: torch.Tensor, attention_mask) -> PatternContext:
    """Learned heads only need the padding: the bidirectional mask is valid[key] on every row."""
    B, _, N, _ = query.shape
    valid = (torch.ones(B, N, dtype=torch.bool, device=query.device) if attention_mask is None
             else attention_mask[:, 0, 0, :].bool())
    zeros = torch.zeros(B, N, dtype=torch.long, device=query.device)
    return PatternContext(zeros, valid, zeros)


def attnsum_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      attnsum: PlanInputs | None = None, output_attentions=False, **kwargs):
    if attnsum is None:
        raise PatternError("a model with the attnsum attention needs its plan: call it with "
                           "attnsum=PlanInputs(plan, PatternContext.from_bertsum(input_ids, "
                           "attention_mask, cls_id=...))")
    heads = attnsum.plan.layer(module.layer_idx)
    ctx = attnsum.ctx
    if ctx is None:
        if any(s is not None for s in heads):
            raise PatternError(f"layer {module.layer_idx} has patterned heads: PlanInputs needs "
                               "ctx=PatternContext.from_bertsum(input_ids, attention_mask, "
                               "cls_id=...)")
        ctx = _padding_context(query, attention_mask)
    if output_attentions:
        out, probs = reference_attention(query, key, value, heads, ctx, scaling)
    else:
        out = patterned_attention(query, key, value, heads, ctx, scaling, attnsum.backend)
        probs = None
    if attnsum.gates is not None:  # (L, H) head gates for importance analysis
        out = out * attnsum.gates[module.layer_idx].view(1, -1, 1, 1).to(out.dtype)
    return out.transpose(1, 2).contiguous(), probs


def drop_synth_projections(model, plan: HeadPlan) -> int:
    """Cut from each layer's query and key projections the rows of synthesized heads (for
    inference: the model no longer matches its checkpoint's shapes). Returns the rows cut."""
    cut = 0
    for m in self_attention_modules(model):
        keep = qk_heads(plan.layer(m.layer_idx))
        d = m.attention_head_size
        if m.query.out_features == len(keep) * d:
            continue
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep]).to(m.query.weight.device)
        for name in ("query", "key"):
            old = getattr(m, name)
            new = torch.nn.Linear(old.in_features, len(rows), bias=old.bias is not None,
                                  device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(old.weight[rows])
                if old.bias is not None:
                    new.bias.copy_(old.bias[rows])
            setattr(m, name, new)
            cut += old.out_features - len(rows)
    return cut


def group_heads(model, plan: HeadPlan) -> HeadPlan:
    """For inference: reorder each layer's heads so that heads of one spec are consecutive, in
    the order each spec first appears (the PyTorch path then takes a group as a view instead
    of gathering it, torch_path.py). The query, key and value rows and the output projection's
    columns move with their heads, so the model computes the same function (the model no
    longer matches its checkpoint's layout). Returns the plan in the new order."""
    rows = list(plan.heads)
    for m in model.modules():
        attn, out = getattr(m, "self", None), getattr(m, "output", None)
        if not (hasattr(attn, "layer_idx") and hasattr(attn, "query") and hasattr(out, "dense")):
            continue
        layer = plan.layer(attn.layer_idx)
        order = sorted(range(len(layer)), key=lambda h: (layer.index(layer[h]), h))
        if order == list(range(len(layer))):
            continue
        d = attn.attention_head_size
        idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in order]).to(out.dense.weight.device)
        with torch.no_grad():
            for lin in (attn.query, attn.key, attn.value):
                lin.weight.copy_(lin.weight[idx])
                if lin.bias is not None:
                    lin.bias.copy_(lin.bias[idx])
            out.dense.weight.copy_(out.dense.weight[:, idx])
        rows[attn.layer_idx] = tuple(layer[h] for h in order)
    return HeadPlan(plan.num_layers, plan.num_heads, tuple(rows))


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


def apply_plan(model, plan: HeadPlan):
    """Check that `plan` fits `model` and switch the model to the ``attnsum`` attention
    implementation; the plan itself is passed with every forward (`PlanInputs`)."""
    register()
    cfg = model.config
    if (plan.num_layers, plan.num_heads) != (cfg.num_hidden_layers, cfg.num_attention_heads):
        raise PatternError(f"the plan is for {plan.num_layers} layers x {plan.num_heads} heads, the "
                           f"model has {cfg.num_hidden_layers} x {cfg.num_attention_heads}")
    mods = self_attention_modules(model)
    if len(mods) != plan.num_layers:
        raise PatternError(f"found {len(mods)} self-attention layers, the plan has {plan.num_layers}")
    if [m.layer_idx for m in mods] != list(range(plan.num_layers)):
        raise PatternError("the model's self-attention layers are not numbered 0..L-1")
    model.set_attn_implementation(NAME)
    return model
