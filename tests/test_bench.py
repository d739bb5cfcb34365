"""The benchmark harnesses in their CPU mode, so they cannot rot: correctness checks run,
rows follow the CSV schema, and the plotting step turns them into tables and plots."""

import ast
import csv
import json
import os
import subprocess
import sys
import tarfile
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


def test_gpu_session_rehearsal(tmp_path):
    """The GPU flight's CPU rehearsal runs every step of the real flight (environment with the
    host side at N = 16,384, compiled-kernel tests, real-size checks, the headline benchmark,
    end to end, autotuning over the AOT-pruned space), exits 0 with at most 8 files and rows in
    every CSV, and the step caps fit the flight's 8 minutes."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_session
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert sum(gpu_session.STEPS.values()) <= gpu_session.FLIGHT_LIMIT_S <= 8 * 60
    FIELDS, E2E_FIELDS = _fields("bench_attention.py"), _fields("bench_e2e.py")
    out = tmp_path / "session"
    r = _run("bench/gpu_session.py", str(out), "--rehearse")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["attention.csv", "checks.csv", "e2e.csv", "kernel_configs.json",
                     "session.log", "tuning.csv"], files
    assert len(files) <= gpu_session.MAX_FILES
    for name in files:
        if name.endswith(".csv"):
            assert len(list(csv.DictReader(open(out / name)))) > 0, name
    log = (out / "session.log").read_text()
    for name in gpu_session.STEPS:  # every step ran to its end
        assert f"| {name} | 0 |" in log, log[-3000:]
    assert "N=16384: tables" in log and "work model N=4096 [paper]" in log
    assert " passed" in log and " failed" not in log  # the kernel tests' pytest line

    tuning = list(csv.DictReader(open(out / "tuning.csv")))
    chosen = json.loads((out / "kernel_configs.json").read_text())["cpu"]["fp32"]["16"]
    for role in ("fwd", "dq", "dkdv"):
        timed = [t for t in tuning if t["kernel"] == role]
        assert timed and all(float(t["ms"]) > 0 and not t["error"] for t in timed)
        [best] = [t for t in timed if t["chosen"] == "True"]
        assert float(best["ms"]) == min(float(t["ms"]) for t in timed)
        assert chosen[role] == [int(best[c]) for c in ("block_m", "block_n", "num_warps",
                                                        "num_stages")]
    checks = list(csv.DictReader(open(out / "checks.csv")))
    assert checks and all(c["ok"] == "True" and not c["error"] for c in checks)

    rows = list(csv.DictReader(open(out / "attention.csv")))
    assert list(rows[0]) == FIELDS
    timed = [r for r in rows if not r["note"]]
    assert {(r["provider"], r["plan"], r["mode"]) for r in timed} >= {
        ("ours", plan, m) for plan in ("paper", "paper-self") for m in ("fwd", "fwd+bwd")} | {
        ("flex", "paper", "fwd"), ("flex", "paper-self", "fwd"), ("sdpa-flash", "learned", "fwd")}
    assert all(float(r["max_err"]) < 1e-3 for r in timed)  # checked before timing
    assert all(float(r["cell_fraction"]) <= float(r["work_fraction"]) <= 1 for r in timed)
    # what CPU lacks is a row with its reason, not a crash: cuDNN, FlexAttention's backward
    assert any(r["provider"] == "sdpa-cudnn" and r["note"] for r in rows)
    assert any(r["provider"] == "flex-first-call" and float(r["ms"]) > 0 for r in rows)

    e2e = list(csv.DictReader(open(out / "e2e.csv")))
    assert list(e2e[0]) == E2E_FIELDS
    assert {r["model"] for r in e2e} == {"teacher", "student-dense", "student-paper"}
    paper = next(r for r in e2e if r["model"] == "student-paper")
    assert float(paper["ratio"]) == pytest.approx(float(paper["measured"]) / float(paper["bound"]))

    # tables and plots come from the CSVs afterwards, on any machine
    _run("bench/plot.py", str(out))
    assert "| ours | paper | fwd+bwd |" in (out / "attention.md").read_text()
    assert "student-paper" in (out / "e2e.md").read_text()
    assert any(p.name.startswith("attention_d16_float32_") for p in out.glob("*.png"))
    assert r.returncode == 0


def test_students_benchmark_quick(tmp_path):
    """bench/bench_students.py in its quick mode, two rounds: one row per served model (its
    median round), rates consistent with their latencies, speedups against the teacher's rate
    of the same run."""
    out = tmp_path / "students.csv"
    _run("bench/bench_students.py", "--quick", "--rounds", "2", "--out", str(out))
    students = list(csv.DictReader(open(out)))
    assert list(students[0]) == _fields("bench_students.py")
    assert [r["model"] for r in students] == ["teacher", "student3-dense", "student3-dense-tx",
                                              "student3-paper", "student3-paper-tx",
                                              "student2-paper"]
    teacher = float(students[0]["docs_per_s"])
    for row in students:
        rate, p50 = float(row["docs_per_s"]), float(row["p50_ms"])
        assert p50 <= float(row["p95_ms"]) and float(row["peak_mib"]) > 0
        assert rate == pytest.approx(int(row["batch"]) / p50 * 1e3)
        assert float(row["speedup"]) == pytest.approx(rate / teacher)


ALLOWED_PAIRS_CHECK = """
import torch
from bench_attention import allowed_pairs, plan_for
from common import CLS_ID, synthetic_batch
from attnsum.attention import PatternContext, layer_allowed
ctx = synthetic_batch(2, 300)
assert int(ctx.token_ids.max()) < 30522  # every id inside the vocabulary
valid = ctx.valid.clone()
valid[1, 250:] = False  # padding
padded = PatternContext.from_bertsum(ctx.token_ids * valid, valid.long(), cls_id=CLS_ID)
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


GPU_IMAGE_IMPORTS = """
import importlib.abc, sys

HIDDEN = ("datasets", "rouge_score", "aclsum", "pysbd", "starlette", "uvicorn")


class Hide(importlib.abc.MetaPathFinder):  # the GPU image lacks these packages
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)")
        return None


sys.meta_path.insert(0, Hide())
import attnsum.attention, attnsum.attention.work, attnsum.attention.triton_path  # noqa
import attnsum.kernels.fused, attnsum.model, attnsum.batching, attnsum.checkpoints  # noqa
import attnsum.train, attnsum.summarizer  # noqa
import bench_attention, bench_e2e, plot  # noqa
assert not any(m.split(".")[0] in HIDDEN for m in sys.modules)
print("ok")
"""


def test_gpu_image_imports_without_data_and_serving_packages():
    """The GPU machine has torch, triton, transformers, numpy, matplotlib and pytest, but not
    datasets, rouge-score, aclsum, pysbd, starlette or uvicorn: the kernel, model, training and
    benchmark modules must import without them (they are imported lazily where needed)."""
    r = subprocess.run([sys.executable, "-c", GPU_IMAGE_IMPORTS], cwd=ROOT / "bench",
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_cnndm_gpu_recipe_rehearsal(tmp_path):
    """bench/cnndm_gpu.sh at tiny scale on CPU: shards and the bf16 encoder prepared, every GPU
    step (teacher, analysis, five students, validation scores), the pack that comes back, and
    the selection and ROUGE of the scores here."""
    env = {**os.environ, "REHEARSE": "1", "SHARDS": str(tmp_path / "shards"),
           "RUNS": str(tmp_path / "runs")}
    r = subprocess.run(["bash", "bench/cnndm_gpu.sh", "all"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = ["teacher", "student", "student-paper", "student-suggested", "student-paper-distil",
            "student-paper-1024"]
    with tarfile.open(tmp_path / "runs" / "out" / "cnndm-gpu.tar.gz") as tar:
        names = tar.getnames()
    assert all(f"./{n}.val.scores.jsonl" in names for n in runs)
    assert not any(n.endswith(".safetensors") for n in names)
    for name in runs:
        scores = json.loads((tmp_path / "runs" / "eval" / name / "scores.scores.json").read_text())
        assert scores["documents"] == 8 and 0 < scores["rouge1"]["mean"] <= 100
    meta = json.loads((tmp_path / "shards" / "cnndm-96" / "val" / "meta.json").read_text())
    assert meta["max_len"] == 96 and meta["texts"]
    assert (tmp_path / "runs" / "analysis" / "report.html").is_file()


def test_precision_parity_harness(tmp_path):
    """bench/precision_parity.py on a tiny checkpoint: fp32 against itself is identical, and
    int8 (dynamic quantization) comes out close to it."""
    from attnsum.checkpoints import save_model
    from attnsum.config import ModelConfig
    from attnsum.model import SummarizerModel

    save_model(SummarizerModel(ModelConfig.from_preset("tiny", "paper")), tmp_path / "ckpt")
    out = tmp_path / "parity.json"
    _run("bench/precision_parity.py", str(tmp_path / "ckpt"), "--limit", "6", "--max-len", "128",
         "--precisions", "fp32", "fp32", "int8", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["documents"] == 6 and r["fp32"]["max_prob_diff"] == 0 and r["fp32"]["same_top3"] == 1
    assert r["int8"]["max_prob_diff"] < 0.1 and 0 <= r["int8"]["same_top3"] <= 1
    assert r["int8"]["rouge1"]["low"] <= r["int8"]["rouge1"]["mean"] <= r["int8"]["rouge1"]["high"]


def test_sentence_vectors_reports_a_collapsed_layer(tmp_path):
    """bench/sentence_vectors.py: a tiny model whose last layer writes one constant vector at
    every token (its output LayerNorm's weight zeroed) reads a cosine of 1 there, while the
    sentence vectors after the embeddings still differ; the same weights with mean pooling are
    read the model's way (other figures after the embeddings)."""
    from dataclasses import replace

    import torch

    from attnsum.checkpoints import save_model
    from attnsum.config import ModelConfig
    from attnsum.model import SummarizerModel

    model = SummarizerModel(ModelConfig.from_preset("tiny"))
    norm = model.encoder.encoder.layer[-1].output.LayerNorm
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.copy_(torch.linspace(-1, 1, norm.bias.numel()))
    save_model(model, tmp_path / "cls")
    model.cfg = replace(model.cfg, pooling="mean")
    save_model(model, tmp_path / "mean")
    out = tmp_path / "sim.json"
    _run("bench/sentence_vectors.py", str(tmp_path / "cls"), str(tmp_path / "mean"),
         "--limit", "4", "--max-len", "128", "--out", str(out))
    sims = json.loads(out.read_text())["similarity"]
    at_cls, mean = sims[str(tmp_path / "cls")], sims[str(tmp_path / "mean")]
    assert len(at_cls) == len(mean) == 1 + model.cfg.layers
    assert at_cls[-1] == pytest.approx(1.0, abs=1e-5) and at_cls[0] < 0.99
    assert mean[-1] == pytest.approx(1.0, abs=1e-5) and abs(mean[0] - at_cls[0]) > 0.01


def test_validation_table_pairs_systems_on_the_same_documents(tmp_path):
    """bench/cnndm_table.py: systems from two evaluation folders, each system's mean, and the
    paired difference A - B equal to the mean of the per-document differences."""
    import numpy as np

    rng = np.random.default_rng(0)
    scores = {"lead3": rng.uniform(20, 50, (40, 3)), "m": rng.uniform(20, 50, (40, 3))}
    for folder, run, system in (("a", "lead3", "lead3"), ("b", "m", "model")):
        (tmp_path / folder / run).mkdir(parents=True)
        rows = [{"id": f"d{i}", "rouge1": r[0], "rouge2": r[1], "rougeLsum": r[2]}
                for i, r in enumerate(scores[run])]
        (tmp_path / folder / run / f"{system}.predictions.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    r = _run("bench/cnndm_table.py", str(tmp_path / "a"), str(tmp_path / "b"), "--first", "0",
             "--pairs", "m:lead3")
    diff = (scores["m"] - scores["lead3"]).mean(0)
    line = next(x for x in r.stdout.splitlines() if x.startswith("| m - lead3 |"))
    assert [float(c.split()[0]) for c in line.split("|")[2:5]] == pytest.approx(diff, abs=0.006)
    assert f"| m | {scores['m'][:, 0].mean():.2f}" in r.stdout
    (tmp_path / "b" / "m" / "model.predictions.jsonl").write_text("".join(
        json.dumps({"id": f"x{i}", "rouge1": 1, "rouge2": 1, "rougeLsum": 1}) + "\n"
        for i in range(40)))
    r = subprocess.run([sys.executable, "bench/cnndm_table.py", str(tmp_path / "a"),
                        str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "not those of the other systems" in r.stderr


def test_served_benchmark_splits_the_time_of_what_users_run(tmp_path):
    """bench/bench_served.py on a few documents: the Python API at two batch sizes against the
    model alone on the same prepared documents, every stage's seconds non-negative and adding
    up to the whole."""
    out = tmp_path / "served.csv"
    _run("bench/bench_served.py", "--docs", "6", "--batches", "1", "4", "--no-cli",
         "--out", str(out))
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == _fields("bench_served.py")
    assert [(r["path"], r["batch"]) for r in rows] == [("python-api", "1"), ("python-api", "4")]
    for r in rows:
        stages = [float(r[k]) for k in ("split_s", "tokenize_s", "model_s", "select_s")]
        assert all(s >= 0 for s in stages)
        assert sum(stages) == pytest.approx(int(r["docs"]) / float(r["docs_per_s"]), rel=0.05)
        assert float(r["end_to_end_share"]) == pytest.approx(
            float(r["docs_per_s"]) / float(r["model_only_docs_per_s"]))
