"""Precision: chosen by what the hardware runs natively, and bf16 autocast on CPU keeps the
patterned model's outputs close to fp32."""

import pytest
import torch
from helpers import embedded_examples

from attnsum import precision as precision_mod
from attnsum.batching import predict_scores
from attnsum.config import ModelConfig
from attnsum.model import SummarizerModel
from attnsum.precision import resolve_precision


@pytest.mark.parametrize("flags, want", [((), "fp32"), (("amx_bf16",), "bf16"),
                                         (("avx512_bf16",), "bf16")])
def test_auto_precision_follows_the_cpu(monkeypatch, flags, want):
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: flags)
    monkeypatch.delenv("ATTNSUM_AUTO_PRECISION", raising=False)  # the suite's forced mode
    p = resolve_precision("auto", "cpu")
    assert p.name == want
    assert (p.dtype is None) == (want == "fp32")


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_auto_precision_can_be_forced(monkeypatch, forced):
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: ("amx_bf16",))
    monkeypatch.setenv("ATTNSUM_AUTO_PRECISION", forced)
    p = resolve_precision("auto", "cpu")
    assert p.name == forced and "ATTNSUM_AUTO_PRECISION" in p.reason
    assert resolve_precision("fp32", "cpu").name == "fp32"  # an explicit choice still wins
    monkeypatch.setenv("ATTNSUM_AUTO_PRECISION", "int4")
    with pytest.raises(ValueError, match="ATTNSUM_AUTO_PRECISION"):
        resolve_precision("auto", "cpu")


def test_precision_errors_and_autocast():
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int4", "cpu")
    x = torch.randn(4, 8)
    with resolve_precision("bf16", "cpu").autocast():
        assert (x @ x.T).dtype == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert (x @ x.T).dtype == torch.float32


@pytest.mark.parametrize("plan, inject", [("paper", "heads"), ("none", "heads"),
                                          ("*:0=match/mask; 1:1=sent/synth", "heads"),
                                          ("paper", "side")])
def test_bf16_autocast_scores_stay_close_to_fp32(plan, inject):
    """Sentence probabilities of a random tiny model on real documents of different lengths
    (padding in every batch) under CPU bf16 autocast, against fp32. bf16 keeps 8 bits of
    mantissa: a probability moves by a few thousandths, not more."""
    torch.manual_seed(0)
    model = SummarizerModel(ModelConfig.from_preset("tiny", plan, inject)).eval()
    if inject == "side":  # side layers start at zero output: give them weight to matter
        for layer in model.encoder.encoder.layer:
            torch.nn.init.normal_(layer.attention.output.side.out.weight, std=0.05)
    examples = embedded_examples("val", limit=6, max_len=128)
    fp32 = predict_scores(model, examples, resolve_precision("fp32", "cpu"), batch_size=3)
    bf16 = predict_scores(model, examples, resolve_precision("bf16", "cpu"), batch_size=3)
    diffs = [abs(a - b) for x, y in zip(fp32, bf16, strict=True) for a, b in zip(x, y, strict=True)]
    assert max(diffs) < 0.02
    assert sum(diffs) / len(diffs) < 0.005


def test_served_models_reuse_freed_memory_without_page_faults():
    # A fresh process: the malloc setting is process-wide. Each round allocates and writes
    # 64 MiB (a batch's activations); with glibc's defaults every round maps it afresh and
    # faults on every page, with `keep_freed_memory` only the first round does.
    import subprocess
    import sys

    code = """
import resource, torch
from attnsum.summarizer import keep_freed_memory
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(16 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
assert keep_freed_memory()
faults()  # the heap grows once
print(default, faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    default, kept = map(int, out.stdout.split())
    assert default > 4 * 16_000 * 0.9  # 4 rounds x 16k pages of 4 KiB
    assert kept < default / 20
