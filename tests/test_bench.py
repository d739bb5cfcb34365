"""The benchmark harnesses in their CPU mode, so they cannot rot: correctness checks run,
rows follow the CSV schema, and the plotting step turns them into tables and plots."""

import ast
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def _fields(script: str) -> list[str]:
    """The CSV schema a benchmark script declares (read from its source, not imported)."""
    tree = ast.parse((ROOT / "bench" / script).read_text())
    node = next(n for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "FIELDS")
    return ast.literal_eval(node.value)


def test_attention_and_e2e_benchmarks_cpu_mode(tmp_path):
    FIELDS, E2E_FIELDS = _fields("bench_attention.py"), _fields("bench_e2e.py")

    _run("bench/bench_attention.py", "--quick", "--out", str(tmp_path / "attention.csv"))
    rows = list(csv.DictReader(open(tmp_path / "attention.csv")))
    assert list(rows[0]) == FIELDS
    providers = {(r["provider"], r["plan"]) for r in rows}
    assert {("ours", "paper"), ("ours", "half"), ("ours-torch", "paper"), ("eager", "learned"),
            ("sdpa-math", "learned")} <= providers
    assert all(float(r["max_err"]) < 1e-3 for r in rows)  # checked before timing
    assert {r["mode"] for r in rows} == {"fwd", "bwd", "fwd+bwd"}

    _run("bench/bench_e2e.py", "--quick", "--out", str(tmp_path / "e2e.csv"))
    e2e = list(csv.DictReader(open(tmp_path / "e2e.csv")))
    assert list(e2e[0]) == E2E_FIELDS
    assert {r["model"] for r in e2e} == {"teacher", "student-dense", "student-paper"}
    paper = next(r for r in e2e if r["model"] == "student-paper")
    assert float(paper["ratio"]) == pytest.approx(float(paper["measured"]) / float(paper["bound"]))

    _run("bench/plot.py", str(tmp_path))
    assert "| ours | paper | fwd+bwd |" in (tmp_path / "attention.md").read_text()
    assert "student-paper" in (tmp_path / "e2e.md").read_text()
    assert list(tmp_path.glob("attention_d16_float32_*.png"))


ALLOWED_PAIRS_CHECK = """
import torch
from bench_attention import allowed_pairs, plan_for
from common import synthetic_batch
from attnsum.attention import PatternContext, layer_allowed
ctx = synthetic_batch(2, 300)
assert int(ctx.token_ids.max()) < 30522  # every id inside the vocabulary
valid = ctx.valid.clone()
valid[1, 250:] = False  # padding
padded = PatternContext.from_bertsum(ctx.token_ids * valid, valid.long())
for name in ("learned", "paper", "half"):
    for c in (ctx, padded):
        plan = plan_for(name, 12)
        assert torch.equal(allowed_pairs(plan, c), layer_allowed(plan, c).sum((0, 2, 3)).double())
print("ok")
"""


def test_work_counted_from_range_tables_equals_the_dense_masks():
    """The benchmark counts allowed pairs from the O(B N) range tables (dense masks need 13 GB at
    N = 16,384): the count must equal the dense masks' on padded synthetic batches."""
    r = subprocess.run([sys.executable, "-c", ALLOWED_PAIRS_CHECK], cwd=ROOT / "bench",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
