"""Serving speed of the teacher and of the students that replace it: documents per second at
batch 1 (latency p50 and p95) and at batch 32 (throughput), and peak memory, per precision.

    python bench/bench_students.py --device cpu --precision fp32   # bench/results/cpu-<cpu>/
    python bench/bench_students.py --device cuda --precision bf16  # bench/results/<gpu>/
    python bench/bench_students.py --quick                         # seconds: the check CI runs

Models (random weights: speed does not depend on them), each as `Summarizer` serves it
(synthesized heads' q and k rows cut, attnsum/attention/hf.py): the teacher (`minilm`, 6
layers), `student-mini-3` dense, with the `paper` plan, and with the plan and BERTSum's
inter-sentence transformer as its sentence classifier (`-tx`), `student-mini-2` with the `paper`
plan. Every (model, length, batch) runs in a process of its own, so its peak memory is its own:
on CPU the process's peak resident set (ru_maxrss, the Python and torch runtime included), on
CUDA `max_memory_allocated`. Inputs: synthetic BERTSum documents of exactly N word pieces.

CSV schema: model, plan, N, batch, precision, p50_ms, p95_ms, docs_per_s, speedup, peak_mib,
device, torch, commit (speedup: docs/s over the teacher's at the same N, batch and precision).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import commit, device_name, int8_dynamic, model_inputs, result_dir, write_csv  # noqa: E402

from attnsum.model import SummarizerModel, model_config  # noqa: E402
from attnsum.precision import resolve_precision  # noqa: E402

FIELDS = ["model", "plan", "N", "batch", "precision", "p50_ms", "p95_ms", "docs_per_s", "speedup",
          "peak_mib", "device", "torch", "commit"]
MODELS = {  # name: (preset, plan, sentence classifier)
    "teacher": ("minilm", "none", "linear"),
    "student3-dense": ("student-mini-3", "none", "linear"),
    "student3-paper": ("student-mini-3", "paper", "linear"),
    "student3-paper-tx": ("student-mini-3", "paper", "transformer"),
    "student2-paper": ("student-mini-2", "paper", "linear"),
}


def measure(preset: str, plan: str, classifier: str, N: int, B: int, device: str, precision: str,
            budget_s: float) -> dict:
    """Time one model in this process: per-call seconds until `budget_s` is spent (at least
    3 calls and at most 50, after one warm-up call)."""
    torch.manual_seed(0)
    model = SummarizerModel(model_config(preset, plan, classifier=classifier,
                                         max_positions=max(512, N)), load_pretrained=False).to(device).eval()
    model.drop_synth_projections()
    if precision == "int8":  # dynamic int8 quantization of the Linear layers (CPU), else fp32
        model = int8_dynamic(model)
        precision = "fp32"
    prec = resolve_precision(precision, torch.device(device))
    ids, seg, am, cls, ctx = model_inputs(B, N, device)

    def call():
        with torch.no_grad(), prec.autocast():
            model(ids, seg, am, cls, ctx)
        if device == "cuda":
            torch.cuda.synchronize()

    call()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, start = [], time.perf_counter()
    while len(times) < 50 and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"p50_ms": 1e3 * times[len(times) // 2],
            "p95_ms": 1e3 * times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
            "docs_per_s": B / times[len(times) // 2], "peak_mib": peak / 2**20, "calls": len(times)}


def run_isolated(name: str, N: int, B: int, args) -> dict:
    """`measure` in a fresh process (its own peak memory, nothing left over from the others)."""
    cmd = [sys.executable, __file__, "--one", json.dumps([*MODELS[name], N, B]), "--device",
           args.device, "--precision", args.precision, "--budget", str(args.budget)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} N={N} B={B} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto",
                   help="auto, fp32, bf16, fp16 (precision.py), or int8: dynamic int8 "
                        "quantization of the Linear layers (CPU)")
    p.add_argument("--n", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timed calls per row")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    args = p.parse_args(argv)
    if args.one:
        preset, plan, classifier, N, B = json.loads(args.one)
        print(json.dumps(measure(preset, plan, classifier, N, B, args.device, args.precision,
                                 args.budget)))
        return 0
    if args.quick:
        args.device, args.precision, args.n, args.batch, args.budget = "cpu", "fp32", [64], [2], 0.1
    if args.precision == "int8":
        name = "int8"
        print("dynamic int8 quantization of the Linear layers, the rest in fp32")
    else:
        precision = resolve_precision(args.precision, torch.device(args.device))
        name = precision.name
        print(precision.describe())
    meta = {"precision": name, "device": device_name(args.device),
            "torch": torch.__version__, "commit": commit()}
    rows = []
    for N in args.n:
        for B in args.batch:
            base = None
            for name in args.models:
                r = run_isolated(name, N, B, args)
                base = r["docs_per_s"] if name == "teacher" else base
                speedup = r["docs_per_s"] / base if base else ""
                rows.append({"model": name, "plan": MODELS[name][1], "N": N, "batch": B,
                             **{k: r[k] for k in ("p50_ms", "p95_ms", "docs_per_s", "peak_mib")},
                             "speedup": speedup, **meta})
                print(f"{name:>15} N={N:>5} B={B:>3}: p50 {r['p50_ms']:9.1f} ms, p95 "
                      f"{r['p95_ms']:9.1f} ms, {r['docs_per_s']:8.2f} docs/s"
                      + (f" ({speedup:.2f}x the teacher)" if speedup != "" else "")
                      + f", peak {r['peak_mib']:.0f} MiB ({r['calls']} calls)", flush=True)
    out = Path(args.out) if args.out else result_dir(args.device) / "students.csv"
    write_csv(out, rows, FIELDS)
    print(f"{len(rows)} rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
