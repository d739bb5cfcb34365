"""CPU benchmark of one attention layer, forward + backward: the `paper` plan on the fast
PyTorch path against dense SDPA and eager attention (B = 4, 12 heads of 64, real documents).
`paper-self-fast` is the same plan with matching-token rows that have no match attending
themselves instead of every key (those rows are dense work in the paper's variant).

    pytest bench/test_cpu_attention.py --benchmark-enable --benchmark-columns=median,min,max

Without --benchmark-enable each case runs once (a smoke test of the harness).
"""

import math

import pytest
import torch

from attnsum.attention import reference_attention, torch_attention
from attnsum.attention.patterns import PatternContext
from attnsum.attention.plan import HeadPlan
from attnsum.data import load_corpus
from attnsum.preprocess import PreprocessConfig, load_tokenizer, prepare

B, H, D = 4, 12, 64


def real_batch(n: int):
    """B inputs of exactly n tokens made of real BERTSum examples (embedded test split),
    so sentence lengths and repeated tokens are those of real text."""
    examples = prepare(load_corpus("embedded", "test"), PreprocessConfig(max_len=n)).examples
    ids = torch.zeros(B, n, dtype=torch.long)
    for b in range(B):
        row: list[int] = []
        for ex in examples[b::B]:
            row += ex.input_ids
            if len(row) >= n:
                break
        row = row[:n]
        ids[b, :len(row)] = torch.tensor(row)
    am = (ids != 0).long()
    return ids, am, PatternContext.from_bertsum(ids, am, cls_id=load_tokenizer().cls_token_id)


def eager(q, k, v, valid):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1) @ v


def sdpa(q, k, v, valid):
    mask = None if bool(valid.all()) else valid[:, None, None, :]  # unmasked: its fastest kernel
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("n", [512, 2048])
@pytest.mark.parametrize("provider", ["paper-fast", "paper-self-fast", "dense-sdpa", "dense-eager"])
def test_layer_fwd_bwd(benchmark, provider, n):
    torch.manual_seed(0)
    ids, am, ctx = real_batch(n)
    q, k, v = (torch.randn(B, H, n, D, requires_grad=True) for _ in range(3))
    plan = HeadPlan.parse("paper", 1, H).layer(0)
    if provider == "paper-self-fast":
        plan = HeadPlan.parse(str(HeadPlan.parse("paper", 1, H)).replace("match/", "match-self/"),
                              1, H).layer(0)
    if provider.startswith("paper"):
        fn = lambda: torch_attention(q, k, v, plan, ctx)
        if n <= 512:  # correctness before timing
            torch.testing.assert_close(fn(), reference_attention(q, k, v, plan, ctx)[0],
                                       atol=1e-4, rtol=1e-4)
    elif provider == "dense-sdpa":
        fn = lambda: sdpa(q, k, v, ctx.valid)
    else:
        fn = lambda: eager(q, k, v, ctx.valid)
    grad = torch.randn(B, H, n, D)

    def step():
        out = fn()
        torch.autograd.grad(out, (q, k, v), grad)

    benchmark.group = f"N={n}"
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
