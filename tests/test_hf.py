"""Hugging Face BERT models running with head plans."""

import pytest
import torch
from transformers import BertConfig, BertModel

from attnsum.hf import apply_plan
from attnsum.patterns import PatternContext, PatternError
from attnsum.plan import HeadPlan
from attnsum.preprocess import minilm_dir


def _batch(vocab, B=2, N=24):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (B, N), generator=g)
    ids[:, 0] = 101
    ids[:, 10] = 101
    am = torch.ones(B, N, dtype=torch.long)
    am[1, 15:] = 0
    return ids, am


def _tiny():
    cfg = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128)
    cfg._attn_implementation = "eager"
    return BertModel(cfg).eval()


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_all_learned_plan_equals_eager(which):
    model = (BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager").eval()
             if which == "minilm" else _tiny())
    ids, am = _batch(model.config.vocab_size)
    with torch.no_grad():
        want = model(ids, attention_mask=am).last_hidden_state
        cfg = model.config
        apply_plan(model, HeadPlan.none(cfg.num_hidden_layers, cfg.num_attention_heads))
        got = model(ids, attention_mask=am).last_hidden_state
    valid = am.bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-4)


def test_patterned_model_returns_attention_maps_that_follow_the_plan():
    model = _tiny()
    ids, am = _batch(2000)
    apply_plan(model, HeadPlan.parse("*:0=sent/mask; 1:2=next/synth", 2, 4))
    ctx = PatternContext.from_bertsum(ids, am)
    with torch.no_grad():
        fast = model(ids, attention_mask=am, pattern_context=ctx).last_hidden_state
        full = model(ids, attention_mask=am, pattern_context=ctx, output_attentions=True)
    torch.testing.assert_close(fast, full.last_hidden_state, atol=1e-5, rtol=1e-4)
    maps = full.attentions
    assert len(maps) == 2 and maps[0].shape == (2, 4, 24, 24)
    # Head 0: intra-sentence; nothing outside the query's sentence.
    sid = ctx.sentence_ids[0]
    outside = sid[:, None] != sid[None, :]
    assert maps[0][0, 0][outside].abs().max() == 0
    # Layer 1 head 2: next token, one-hot.
    assert torch.allclose(maps[1][0, 2].diagonal(1), torch.ones(23))
    assert config_plan_roundtrip(model)


def config_plan_roundtrip(model):
    plan = HeadPlan.from_dict(model.config.attnsum_plan)
    return str(plan) == "0:0=sent/mask; 1:0=sent/mask; 1:2=next/synth"


def test_errors_for_a_plan_that_does_not_fit_or_a_missing_context():
    model = _tiny()
    with pytest.raises(PatternError, match="6 x 12|2 x 4"):
        apply_plan(model, HeadPlan.parse("paper", 6, 12))
    apply_plan(model, HeadPlan.parse("paper", 2, 4))
    ids, am = _batch(2000)
    with pytest.raises(PatternError, match="pattern_context"):
        model(ids, attention_mask=am)
