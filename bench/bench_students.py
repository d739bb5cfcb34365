"""Serving speed of the teacher and of the students that replace it: documents per second at
batch 1 (latency p50 and p95) and at batch 32 (throughput), and peak memory, per precision.

    python bench/bench_students.py --device cpu --precision fp32   # bench/results/cpu-<cpu>/
    python bench/bench_students.py --device cuda --precision bf16  # bench/results/<gpu>/
    python bench/bench_students.py --quick                         # seconds, nothing written

Models (random weights: speed does not depend on them), each as `Summarizer` serves it
(`prepare_for_serving` in attnsum/summarizer.py: each layer's heads of one pattern made
consecutive, synthesized heads' q and k rows cut, the encoder's Linear weights cast to the
precision once, freed memory kept by malloc, on CPU the encoder's weights packed for oneDNN and its
GELU inside the product, each residual add and LayerNorm one pass of the CPU kernel,
attnsum/cpu_linear.py; masked heads in the CPU kernel, attention/torch_path.py): the teacher (`minilm`, 6
layers), `student-mini-3` dense, with the `paper` plan, each also with BERTSum's
inter-sentence transformer as its sentence classifier (`-tx`: `student3-paper-tx` is the released
architecture, `student3-dense-tx` its dense twin), `student-mini-2` with the `paper` plan.
Every (model, length, batch) runs in a process of its own, so its peak memory is its own: on CPU
the process's peak resident set (ru_maxrss, the Python and torch runtime included), on CUDA
`max_memory_allocated`. Inputs: synthetic BERTSum documents of exactly N word pieces.

Against the hardware: each row counts the FLOPs of the model's Linear layers in one call (forward
hooks: 2 x rows x in x out) as GFLOP/s, and times the same matrix products bare (each Linear's
shapes, in the served dtype, in the same process; on CPU the faster of `a @ b` and the packed
product): `matmul_bound_fraction` is that time over the
call's, the share of a "matrix products only" bound the model reaches (1.0: nothing but its
products; attention, norms and the rest make up the gap).

With `--rounds R` the models of each (N, batch) are measured R times in turn (each in its own
process) and each row is its model's median round: on a shared machine whose speed drifts,
interleaving keeps the ratios to the teacher honest where one pass read +-15% from process to
process.

CSV schema: model, plan, N, batch, precision, p50_ms, p95_ms, docs_per_s, speedup, peak_mib,
gflop_per_s, matmul_bound_fraction, device, torch, commit (speedup: docs/s over the teacher's
at the same N, batch and precision).
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

from attnsum.attention import PatternContext  # noqa: E402
from attnsum.config import ModelConfig  # noqa: E402
from attnsum.cpu_linear import PackedLinear, packed_linear_works  # noqa: E402
from attnsum.model import SummarizerModel  # noqa: E402
from attnsum.precision import resolve_precision  # noqa: E402
from attnsum.summarizer import prepare_for_serving  # noqa: E402

FIELDS = ["model", "plan", "N", "batch", "precision", "p50_ms", "p95_ms", "docs_per_s", "speedup",
          "gflop_per_s", "matmul_bound_fraction",
          "peak_mib", "device", "torch", "commit"]
MODELS = {  # name: (preset, plan, sentence classifier)
    "teacher": ("minilm", "none", "linear"),
    "student3-dense": ("student-mini-3", "none", "linear"),
    "student3-dense-tx": ("student-mini-3", "none", "transformer"),  # the release's dense twin
    "student3-paper": ("student-mini-3", "paper", "linear"),
    "student3-paper-tx": ("student-mini-3", "paper", "transformer"),
    "student2-paper": ("student-mini-2", "paper", "linear"),
}


def measure(preset: str, plan: str, classifier: str, N: int, B: int, device: str, precision: str,
            budget_s: float) -> dict:
    """Time one model in this process: per-call seconds until `budget_s` is spent (at least
    3 calls and at most 50, after one warm-up call)."""
    torch.manual_seed(0)
    model = SummarizerModel(ModelConfig.from_preset(preset, plan, classifier=classifier, max_len=N),
                            load_pretrained=False)
    int8 = precision == "int8"  # dynamic int8 quantization of the Linear layers (CPU), else fp32
    prec = resolve_precision("fp32" if int8 else precision, torch.device(device))
    model = prepare_for_serving(model, device, prec, pack=not int8)
    if int8:
        model = int8_dynamic(model)
    ids, seg, am, cls, ctx = model_inputs(B, N, device)
    shapes = linear_shapes(model, lambda: model(ids, seg, am, cls, ctx), prec)

    def call():  # a batch's pattern context is new in every call, as served (batching.py)
        fresh = PatternContext(ctx.token_ids, ctx.valid, ctx.sentence_ids)
        with torch.no_grad(), prec.autocast():
            model(ids, seg, am, cls, fresh)
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
    p50 = times[len(times) // 2]
    flops = sum(2 * rows * k * n * count for (rows, k, n), count in shapes.items())
    bound = sum(count * matmul_seconds(rows, k, n, prec.dtype or torch.float32, device)
                for (rows, k, n), count in shapes.items())
    return {"p50_ms": 1e3 * p50, "gflop_per_s": flops / p50 / 1e9,
            "matmul_bound_fraction": bound / p50,
            "p95_ms": 1e3 * times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
            "docs_per_s": B / times[len(times) // 2], "peak_mib": peak / 2**20, "calls": len(times)}


def linear_shapes(model, call, prec) -> dict[tuple[int, int, int], int]:
    """(rows, in, out) of every Linear product in one call of the model, with its count."""
    shapes: dict[tuple[int, int, int], int] = {}

    def hook(m, inputs, output):
        x = inputs[0]
        key = (x.numel() // x.shape[-1], m.in_features, m.out_features)
        shapes[key] = shapes.get(key, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Linear | PackedLinear)
               or type(m).__name__ == "DynamicQuantizedLinear"]
    try:
        with torch.no_grad(), prec.autocast():
            call()
    finally:
        for h in handles:
            h.remove()
    return shapes


def matmul_seconds(rows: int, k: int, n: int, dtype, device: str, reps: int = 5) -> float:
    """Median seconds of one bare (rows x k) @ (k x n) product in `dtype`: on CPU the faster of
    `a @ b` and oneDNN's product on a packed weight (attnsum/cpu_linear.py, what served models
    run), so that the bound is the best product this machine has."""
    a = torch.randn(rows, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    products = [lambda: a @ b]
    if device == "cpu" and packed_linear_works(dtype):
        packed = PackedLinear(b.t().contiguous(), None)
        products.append(lambda: packed(a))
    best = float("inf")
    for product in products:
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            product()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        best = min(best, sorted(times[1:])[reps // 2])
    return best


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
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every model this many times, in turn; a row is its median round")
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
            runs = {name: [] for name in args.models}
            for _ in range(args.rounds):  # the models in turn, so that a slow spell of a shared
                for name in args.models:  # machine falls on all of them
                    runs[name].append(run_isolated(name, N, B, args))
            for name in args.models:
                r = sorted(runs[name], key=lambda x: x["p50_ms"])[len(runs[name]) // 2]
                base = r["docs_per_s"] if name == "teacher" else base
                speedup = r["docs_per_s"] / base if base else ""
                rows.append({"model": name, "plan": MODELS[name][1], "N": N, "batch": B,
                             **{k: r[k] for k in ("p50_ms", "p95_ms", "docs_per_s", "peak_mib",
                                                  "gflop_per_s", "matmul_bound_fraction")},
                             "speedup": speedup, **meta})
                print(f"{name:>15} N={N:>5} B={B:>3}: p50 {r['p50_ms']:9.1f} ms, p95 "
                      f"{r['p95_ms']:9.1f} ms, {r['docs_per_s']:8.2f} docs/s"
                      + (f" ({speedup:.2f}x the teacher)" if speedup != "" else "")
                      + f", {r['gflop_per_s']:.0f} GFLOP/s, {r['matmul_bound_fraction']:.2f} of "
                      f"its matmul bound, peak {r['peak_mib']:.0f} MiB ({r['calls']} calls)",
                      flush=True)
    if args.quick and not args.out:  # a check of the script, not a measurement to keep
        print(f"{len(rows)} rows of the quick check, not written (--out FILE keeps them)")
        return 0
    out = Path(args.out) if args.out else result_dir(args.device) / "students.csv"
    write_csv(out, rows, FIELDS)
    print(f"{len(rows)} rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
