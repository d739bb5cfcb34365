"""Helpers shared by the tests (pytest puts this folder on the import path): random attention
batches with every awkward case, the mixed plan, a tiny random BERT, embedded examples, the
check that NaN and Inf in padding rows stay there, and a free loopback port."""

import socket

import torch

from attnsum.attention import PatternContext

CLS_ID = 101  # bert-base-uncased's [CLS] (tests/test_preprocess.py checks the tokenizer's)

MIXED = ("*:0=match/mask; *:1=sent/mask; *:2=next/synth; *:3=prev/synth; *:4=match-self/mask; "
         "*:5=match/synth; *:6=offset:3/mask; *:7=sent/synth")  # head 8 stays learned


def make_batch(B, N, H=9, D=16, vocab=5, dtype=torch.float32, seed=0):
    """Random batch: small vocabulary (many matches and some no-match rows), padding in
    document 1, a one-sentence document 2."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, N), generator=g)
    ids[0, : min(N, 3)] = torch.tensor([100, 200, 300])[: min(N, 3)]  # unique tokens: no match
    am = torch.ones(B, N, dtype=torch.long)
    if B > 1:
        am[1, max(1, N - N // 3):] = 0
    spans = []
    for b in range(B):
        n = int(am[b].sum())
        cut = sorted({0, n, *(c for c in (n // 4, n // 2, n // 2 + 1) if 0 < c < n)})
        spans.append(list(zip(cut[:-1], cut[1:], strict=True)))
    if B > 2:
        spans[2] = [(0, int(am[2].sum()))]
    ctx = PatternContext.from_spans(ids, am, spans)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(dtype) for _ in range(3))
    return q, k, v, ctx


def tiny_bert(vocab_size: int = 2000, attn_implementation: str = "eager"):
    """A random 2-layer, 4-head BERT of width 64, in eval mode."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=128)
    cfg._attn_implementation = attn_implementation
    return BertModel(cfg).eval()


def embedded_examples(split: str = "train", limit: int = 12, max_len: int = 128):
    """BERTSum examples of the first `limit` embedded documents of `split`."""
    from attnsum.data import load_corpus
    from attnsum.preprocess import PreprocessConfig, prepare

    return prepare(load_corpus("embedded", split, limit=limit),
                   PreprocessConfig(max_len=max_len)).examples


def poisoned_padding(q, k, v, ctx):
    """Copies of q, k, v with NaN and Inf planted in the rows of padding tokens."""
    pad = ~ctx.valid[:, None, :, None]
    poison = torch.tensor([float("nan"), float("inf"), -float("inf")])
    return tuple(x.masked_fill(pad, poison[i]) for i, x in enumerate((q, k, v)))


def check_padding_isolation(fn, q, k, v, ctx):
    """NaN and Inf in padding rows change no valid row's output, and every gradient is finite
    (zero at padding rows)."""
    clean = fn(q, k, v)
    bad = [x.clone().requires_grad_(True) for x in poisoned_padding(q, k, v, ctx)]
    out = fn(*bad)
    valid = ctx.valid[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[valid], clean[valid], atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(out[valid].sum(), bad)
    for name, g in zip("qkv", grads, strict=True):
        assert torch.isfinite(g).all(), f"d{name}"
        assert (g.masked_select(~ctx.valid[:, None, :, None].expand_as(g)) == 0).all(), f"d{name}"


def free_port() -> int:
    """A loopback port free now (for a server the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
