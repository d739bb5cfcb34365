"""Hugging Face BERT models running with head plans."""

import pytest
import torch
from helpers import CLS_ID, tiny_bert
from transformers import BertModel

from attnsum.attention import HeadPlan, PatternContext, PatternError, PlanInputs, apply_plan
from attnsum.preprocess import minilm_dir


def _batch(vocab, B=2, N=24):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (B, N), generator=g)
    ids[:, 0] = 101
    ids[:, 10] = 101
    am = torch.ones(B, N, dtype=torch.long)
    am[1, 15:] = 0
    return ids, am


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_all_learned_plan_equals_eager(which):
    model = (BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()
             if which == "minilm" else tiny_bert())
    ids, am = _batch(model.config.vocab_size)
    with torch.no_grad():
        want = model(ids, attention_mask=am).last_hidden_state
        cfg = model.config
        plan = HeadPlan.none(cfg.num_hidden_layers, cfg.num_attention_heads)
        apply_plan(model, plan)
        got = model(ids, attention_mask=am, attnsum=PlanInputs(plan)).last_hidden_state
    valid = am.bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-4)


def test_patterned_model_returns_attention_maps_that_follow_the_plan():
    model = tiny_bert()
    ids, am = _batch(2000)
    plan = HeadPlan.parse("*:0=sent/mask; 1:2=next/synth", 2, 4)
    apply_plan(model, plan)
    inputs = PlanInputs(plan, PatternContext.from_bertsum(ids, am, cls_id=CLS_ID))
    ctx = inputs.ctx
    with torch.no_grad():
        fast = model(ids, attention_mask=am, attnsum=inputs).last_hidden_state
        full = model(ids, attention_mask=am, attnsum=inputs, output_attentions=True)
    torch.testing.assert_close(fast, full.last_hidden_state, atol=1e-5, rtol=1e-4)
    maps = full.attentions
    assert len(maps) == 2 and maps[0].shape == (2, 4, 24, 24)
    # Head 0: intra-sentence; nothing outside the query's sentence.
    sid = ctx.sentence_ids[0]
    outside = sid[:, None] != sid[None, :]
    assert maps[0][0, 0][outside].abs().max() == 0
    # Layer 1 head 2: next token, one-hot.
    assert torch.allclose(maps[1][0, 2].diagonal(1), torch.ones(23))


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_synthesized_heads_need_no_q_and_k(backend):
    from attnsum.attention.hf import drop_synth_projections

    model = tiny_bert()
    ids, am = _batch(2000)
    # layer 0: two synthesized heads of four; layer 1: all four (one head's rows must stay)
    plan = HeadPlan.parse("0:1,3=next/synth; 0:2=sent/mask; 1:*=prev/synth", 2, 4)
    apply_plan(model, plan)
    inputs = PlanInputs(plan, PatternContext.from_bertsum(ids, am, cls_id=CLS_ID), backend)
    with torch.no_grad():
        want = model(ids, attention_mask=am, attnsum=inputs).last_hidden_state
        q0 = model.encoder.layer[0].attention.self.query.weight.clone()
        assert drop_synth_projections(model, plan) == 2 * (2 * 16 + 3 * 16)
        assert drop_synth_projections(model, plan) == 0  # once is enough
        got = model(ids, attention_mask=am, attnsum=inputs,
                    output_attentions=backend == "reference").last_hidden_state
    attn = [layer.attention.self for layer in model.encoder.layer]
    assert attn[0].query.weight.shape == (2 * 16, 64) and attn[1].key.weight.shape == (16, 64)
    assert torch.equal(attn[0].query.weight, torch.cat([q0[:16], q0[32:48]]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_errors_for_a_plan_that_does_not_fit_or_a_missing_context():
    model = tiny_bert()
    with pytest.raises(PatternError, match="6 x 12|2 x 4"):
        apply_plan(model, HeadPlan.parse("paper", 6, 12))
    plan = HeadPlan.parse("paper", 2, 4)
    apply_plan(model, plan)
    ids, am = _batch(2000)
    with pytest.raises(PatternError, match=r"call it with attnsum=PlanInputs"):
        model(ids, attention_mask=am)
    with pytest.raises(PatternError, match="layer 0 has patterned heads: PlanInputs needs ctx"):
        model(ids, attention_mask=am, attnsum=PlanInputs(plan))


def test_grouped_heads_compute_the_same_function():
    from attnsum.attention.hf import drop_synth_projections, group_heads

    model = tiny_bert()
    ids, am = _batch(2000)
    # interleaved specs in layer 0 (two groups of two heads), layer 1 already grouped
    plan = HeadPlan.parse("0:0,2=sent/mask; 0:1,3=next/synth; 1:2,3=prev/synth", 2, 4)
    apply_plan(model, plan)
    ctx = PatternContext.from_bertsum(ids, am, cls_id=CLS_ID)
    with torch.no_grad():
        want = model(ids, attention_mask=am, attnsum=PlanInputs(plan, ctx)).last_hidden_state
        v0 = model.encoder.layer[0].attention.self.value.weight.clone()
        grouped = group_heads(model, plan)
        drop_synth_projections(model, grouped)
        got = model(ids, attention_mask=am, attnsum=PlanInputs(grouped, ctx)).last_hidden_state
    assert [str(s) for s in grouped.layer(0)] == ["sent/mask"] * 2 + ["next/synth"] * 2
    assert grouped.layer(1) == plan.layer(1)
    # value rows moved with their heads: 0, 2, 1, 3
    v = model.encoder.layer[0].attention.self.value.weight
    assert torch.equal(v, torch.cat([v0[:16], v0[32:48], v0[16:32], v0[48:]]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
