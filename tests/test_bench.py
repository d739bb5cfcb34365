"""The benchmark harnesses in their CPU mode, so they cannot rot: correctness checks run,
rows follow the CSV schema, and the plotting step turns them into tables and plots."""

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


def test_attention_and_e2e_benchmarks_cpu_mode(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_attention import FIELDS
    from bench_e2e import FIELDS as E2E_FIELDS

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
