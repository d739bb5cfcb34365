"""Several processes and hard kills, for real: training and summarizing under torchrun (gloo, 2
processes on CPU) against one process, and SIGKILL in the middle of checkpoint, metrics and
output writes (tests/killpoint.py holds a process there) followed by a rerun that must end
exactly where an uninterrupted run ends."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnsum.checkpoints import last_checkpoint, load_model
from attnsum.data import load_corpus

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
# Global batch 4 in both layouts; no dropout, so that one process and two draw the same model;
# fp32, so that the runs agree to 1e-5 on every CPU (auto is bf16 where the CPU has it).
TRAIN = ["train", "--preset", "tiny", "--limit", "8", "--max-len", "96", "--steps", "6",
         "--val-every", "2", "--log-every", "1", "--dropout", "0", "--precision", "fp32"]
ONE, TWO = ["--batch-size", "4"], ["--batch-size", "2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
KILLPOINT = str(ROOT / "tests" / "killpoint.py")


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_at(cmd: list[str], marker: Path, timeout: float = 240) -> None:
    """Start `cmd`, wait until a process of it reaches its kill point, SIGKILL them all."""
    proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended before its kill point: {proc.stderr.read()[-3000:]}")
        assert time.time() < end, "the kill point was never reached"
        time.sleep(0.1)
    # torchrun's workers leave its process group: kill the whole tree, or they hang on forever
    tree = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict:
    return load_model(last_checkpoint(run)).state_dict()


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs: one process, and two under torchrun."""
    root = tmp_path_factory.mktemp("runs")
    _run([sys.executable, "-m", "attnsum", *TRAIN, *ONE, "--out", str(root / "one")])
    _run([*TORCHRUN, "-m", "attnsum", *TRAIN, *TWO, "--out", str(root / "two")])
    return root


def test_two_processes_train_like_one(runs):
    one, two = _metrics(runs / "one"), _metrics(runs / "two")
    # rank 0 alone writes: every step and validation logged once
    assert [m["step"] for m in two if "loss" in m] == list(range(1, 7))
    assert [m["step"] for m in two if "val" in m] == [2, 4, 6]
    losses = lambda ms: [m["loss"] for m in ms if "loss" in m]  # noqa: E731
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    _assert_same_weights(_weights(runs / "two"), _weights(runs / "one"), atol=1e-5)
    assert sorted(p.name for p in (runs / "two").iterdir()) == [
        "best-2", "best-4", "best-6", "last", "last-6", "metrics.jsonl"]


@pytest.mark.parametrize("name, count", [
    ("trainer.json", 2),  # step 4's resume state, whole but for its last file
    ("model.safetensors", 3),  # step 4's best checkpoint, before any of step 4's resume state
])
def test_a_kill_while_a_checkpoint_is_written_resumes_exactly(runs, tmp_path, name, count):
    run, marker = tmp_path / "run", tmp_path / "marker"
    _kill_at([*TORCHRUN, KILLPOINT, "rename", name, str(count), str(marker), "--", *TRAIN, *TWO,
              "--out", str(run)], marker)
    assert json.loads((last_checkpoint(run) / "trainer.json").read_text())["step"] == 2
    load_model(run)  # the run folder stays loadable: its best checkpoint
    _run([*TORCHRUN, "-m", "attnsum", *TRAIN, *TWO, "--out", str(run)])
    _assert_same_weights(_weights(run), _weights(runs / "two"))
    assert [m["step"] for m in _metrics(run) if "loss" in m] == list(range(1, 7))


def test_a_kill_mid_metrics_line_resumes_exactly(runs, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    # writes: loss 1, loss 2, val 2, loss 3, loss 4 (torn in half)
    _kill_at([sys.executable, KILLPOINT, "write", "metrics.jsonl", "5", str(marker), "--", *TRAIN,
              *ONE, "--out", str(run)], marker)
    assert not (run / "metrics.jsonl").read_text().endswith("\n")  # the torn line is there
    _run([sys.executable, "-m", "attnsum", *TRAIN, *ONE, "--out", str(run)])
    metrics = _metrics(run)  # every line whole JSON
    assert [m["step"] for m in metrics] == [m["step"] for m in _metrics(runs / "one")]
    _assert_same_weights(_weights(run), _weights(runs / "one"))


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    docs = load_corpus("embedded", "val", limit=7).documents  # odd: the ranks get 4 and 3
    path.write_text("".join(json.dumps({"id": d.id, "text": " ".join(d.sentences)}) + "\n"
                            for d in docs))
    return path


def test_two_processes_summarize_like_one(runs, documents, tmp_path):
    args = ["summarize", "--checkpoint", str(runs / "one"), str(documents)]
    one = _run([sys.executable, "-m", "attnsum", *args, "--out", str(tmp_path / "one.jsonl")])
    two = _run([*TORCHRUN, "-m", "attnsum", *args, "--chunk", "2", "--out",
                str(tmp_path / "two.jsonl")])
    # the same documents, in order, with the same summaries; the scores agree to float noise (the
    # ranks batch other documents together, and CPU fp32 matmuls round by shape)
    one_rows, two_rows = ([json.loads(line) for line in (tmp_path / f).read_text().splitlines()]
                          for f in ("one.jsonl", "two.jsonl"))
    assert len(one_rows) == 7
    assert [{k: r[k] for k in r if k != "scores"} for r in two_rows] == [
        {k: r[k] for k in r if k != "scores"} for r in one_rows]
    for a, b in zip(two_rows, one_rows, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    assert "summarized 7 documents" in one.stderr and "summarized 7 documents" in two.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"]


def test_a_killed_summarize_leaves_no_complete_looking_file(runs, documents, tmp_path):
    out, marker = tmp_path / "out.jsonl", tmp_path / "marker"
    args = ["summarize", "--checkpoint", str(runs / "one"), str(documents), "--chunk", "1",
            "--out", str(out)]
    _kill_at([sys.executable, KILLPOINT, "write", ".partial", "3", str(marker), "--", *args], marker)
    assert not out.exists() and Path(f"{out}.partial").is_file()
    _run([sys.executable, "-m", "attnsum", *args])
    _run([sys.executable, "-m", "attnsum", *args[:-1], str(tmp_path / "straight.jsonl")])
    assert out.read_text() == (tmp_path / "straight.jsonl").read_text()
    assert not Path(f"{out}.partial").exists()
