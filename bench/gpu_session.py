"""The GPU session in one command, rehearsed on CPU so that no device minute is spent on a mistake
a CPU could have caught.

    python bench/gpu_session.py OUT --part 1      # GPU: environment, autotuning, kernel tests,
                                                  #      real-size checks
    python bench/gpu_session.py OUT --part 2      # GPU: benchmarks, tables, plots
    python bench/gpu_session.py OUT --rehearse    # CPU: every step, small kernels (interpreter)

Each part fits one device call of 9 minutes (every step has its own time limit) and writes its
results before the next step starts, at most 8 files in all: session.log (everything printed),
tuning.csv and kernel_configs.json (the autotuning), checks.csv, attention.csv, e2e.csv,
students.csv, plots.tar.gz (the plots and the Markdown tables attention.md and e2e.md, which
bench/plot.py also remakes from the CSVs). Autotuning comes first: every later step, part 2
included, launches the kernels with the configurations it chose. It needs only what the GPU
image has (torch, triton, transformers, numpy, matplotlib, pytest) and runs from a checkout
without installing. The rehearsal runs the same host-side code at the real sizes (inputs, range
and block tables at N = 16,384, the work model at 4,096, CSV, tables, plots) and the kernels
under Triton's interpreter at small sizes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

if "--rehearse" in sys.argv:  # the kernels run on CPU through Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from common import CLS_ID, ROOT, pruned_space, synthetic_batch  # noqa: E402

from attnsum.attention import HeadPlan, PatternContext, reference_attention  # noqa: E402
from attnsum.attention.triton_path import fused_layer_attention, layer_tables  # noqa: E402
from attnsum.attention.work import head_work, layer_bound  # noqa: E402
from attnsum.kernels import fused  # noqa: E402

STEP_LIMIT_S = 420  # one step of a part; a part stays under the device's 10 minutes
TUNE_LIMIT_S = 180  # the autotuning's share of part 1: what it does not reach keeps its default
TUNED_FILE = "kernel_configs.json"
TUNING_FIELDS = ["arch", "dtype", "D", "N", "kernel", "block_m", "block_n", "num_warps",
                 "num_stages", "default", "ms", "chosen", "error"]


class Tee(io.TextIOBase):
    """Everything printed also goes to OUT/session.log."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)


def step(title: str):
    print(f"\n== {title} ({time.strftime('%H:%M:%S')})", flush=True)


def run(cmd: list[str], limit: int = STEP_LIMIT_S) -> int:
    print("$ " + " ".join(cmd), flush=True)
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        print(f"step stopped after {limit} s", flush=True)
        return 124
    print(r.stdout[-6000:] + r.stderr[-3000:], flush=True)
    return r.returncode


def environment() -> None:
    step("environment")
    print(f"python {platform.python_version()}, torch {torch.__version__}", flush=True)
    for mod in ("triton", "transformers", "numpy", "matplotlib"):
        try:
            print(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            print(f"{mod}: not installed")
    if torch.cuda.is_available():
        print(f"GPU {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
            print(f"nvidia-smi: {smi}")
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"nvidia-smi unavailable: {e}")
    else:
        print("no GPU: rehearsal on CPU")


def _time_ms(fn, reps: int, device: str) -> float:
    """Mean milliseconds of `fn` over `reps` calls after one warm-up call (which compiles)."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def _kernel_work(plan, ctx: PatternContext, D: int, dtype: torch.dtype, device: str) -> dict:
    """The two timed calls of the autotuning: "fwd" (forward) and "bwd" (forward and backward)
    of one layer on random q, k, v of (B, 12, N, D)."""
    B, N = ctx.shape
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (torch.randn(B, 12, N, D, device=device, generator=g).to(dtype)
                   for _ in range(4))
    leaves = [x.requires_grad_(True) for x in (q, k, v)]

    def fwd():
        with torch.no_grad():
            return fused_layer_attention(q, k, v, plan, ctx)

    def bwd():
        return torch.autograd.grad(fused_layer_attention(*leaves, plan, ctx), leaves, do)

    return {"fwd": fwd, "bwd": bwd}


def autotune(out: Path, rehearse: bool, device: str) -> None:
    """Time each kernel's configurations of the AOT-pruned space (bench/common.py
    `pruned_space`: compiled ahead of time with no spill, within shared memory, on tensor cores)
    on this GPU, in bf16 at D = 32, 64, 128, N = 4,096, twelve heads of the `paper` plan: the
    forward kernel by the forward, dQ and dK/dV by forward and backward with the other kernels
    at their defaults. The fastest go to OUT/kernel_configs.json, which every later step reads
    through ATTNSUM_KERNEL_CONFIGS (kernels/fused.py `tuned_config`), and every timing to
    OUT/tuning.csv. The rehearsal tunes two candidates of each from the sm_90 rows, at a small
    size in fp32 under the interpreter."""
    step("autotune over the AOT-pruned space")
    cc = fused._capability(torch.device(device))
    arch = fused.arch_key(cc)
    if rehearse:
        space_arch, dims, dtype, B, N, reps = "sm_90", (16,), torch.float32, 2, 64, 1
    else:
        space_arch, dims, dtype, B, N, reps = arch, (32, 64, 128), torch.bfloat16, 4, 4096, 10
    dname = fused.DTYPE_NAMES[dtype]
    plan = HeadPlan.parse("paper", 1, 12).layer(0)
    ctx = synthetic_batch(B, N, device=device)
    untuned = fused.launch_config
    rows, chosen, t0 = [], {}, time.time()
    try:
        for D in dims:
            work = _kernel_work(plan, ctx, D, dtype, device)
            for role, candidates in pruned_space(space_arch, "bf16", D).items():
                best = None
                for cfg in candidates[:2] if rehearse else candidates:
                    if time.time() - t0 > TUNE_LIMIT_S:
                        break
                    fused.launch_config = (lambda kernel, d, c, dt, role=role, cfg=cfg:
                                           cfg if kernel == role else untuned(kernel, d, c, dt))
                    row = {"arch": arch, "dtype": dname, "D": D, "N": N, "kernel": role,
                           **cfg._asdict(), "chosen": False, "error": "",
                           "default": cfg == fused.default_config(role, D, cc)}
                    try:
                        row["ms"] = _time_ms(work["fwd" if role == "fwd" else "bwd"], reps, device)
                    except Exception as e:  # a launch failure is a finding, not a crash
                        row["ms"], row["error"] = float("inf"), str(e).splitlines()[0][:200]
                    rows.append(row)
                    if row["ms"] < float("inf") and (best is None or row["ms"] < best["ms"]):
                        best = row
                if best is not None:
                    best["chosen"] = True
                    chosen.setdefault(arch, {}).setdefault(dname, {}).setdefault(str(D), {})[
                        role] = [best["block_m"], best["block_n"], best["num_warps"],
                                 best["num_stages"]]
                    print(f"D={D} {role}: {best['block_m']}x{best['block_n']} "
                          f"w{best['num_warps']} s{best['num_stages']} {best['ms']:.3f} ms of "
                          f"{len(candidates)} candidates", flush=True)
    finally:
        fused.launch_config = untuned
    with open(out / "tuning.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TUNING_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / TUNED_FILE).write_text(json.dumps(chosen) + "\n")
    os.environ[fused.TUNED_ENV] = str((out / TUNED_FILE).resolve())
    print(f"{sum(r['chosen'] for r in rows)} configurations chosen from {len(rows)} timed "
          f"in {time.time() - t0:.0f} s: {out / TUNED_FILE}", flush=True)


def _padded(ctx: PatternContext, cut: float = 0.8) -> PatternContext:
    """The batch with its last document cut to `cut` of its length (right padding)."""
    valid = ctx.valid.clone()
    valid[-1, int(ctx.shape[1] * cut):] = False
    return PatternContext.from_bertsum(ctx.token_ids * valid, valid.long(), cls_id=CLS_ID)


def real_size_checks(out: Path, sizes, dims, dtypes, device: str) -> list[dict]:
    """The fused kernel against the fp32 dense reference, forward and dq/dk/dv with one shared
    upstream gradient, `paper` plan, padding: error <= 2x PyTorch's own error in that dtype
    + 1e-3 (the tolerance rule of attnsum/attention/__init__.py)."""
    step("real-size checks: fused kernel vs fp32 reference")
    plan = HeadPlan.parse("paper", 1, 4).layer(0)
    rows = []
    for N in sizes:
        B = 2 if N <= 4096 else 1  # the reference holds (B, 4, N, N) fp32 probabilities
        ctx = synthetic_batch(B, N, device=device)
        ctx = _padded(ctx) if B > 1 else ctx
        for D in dims:
            for dtype in dtypes:
                g = torch.Generator(device=device).manual_seed(0)
                q, k, v, do = (torch.randn(B, 4, N, D, device=device, generator=g) for _ in range(4))
                low = [x.to(dtype).requires_grad_(True) for x in (q, k, v)]
                got = fused_layer_attention(*low, plan, ctx)
                grads = torch.autograd.grad(got, low, do.to(dtype))
                ref_in = [x.detach().float().requires_grad_(True) for x in low]
                ref = reference_attention(*ref_in, plan, ctx)[0]
                ref_grads = torch.autograd.grad(ref, ref_in, do.float())
                pt_in = [x.detach().requires_grad_(True) for x in low]
                pt = reference_attention(*pt_in, plan, ctx, upcast=False)[0]
                pt_grads = torch.autograd.grad(pt, pt_in, do.to(dtype))
                row = {"N": N, "D": D, "dtype": str(dtype).replace("torch.", ""), "ok": True}
                for name, a, r, p in zip(("out", "dq", "dk", "dv"), (got, *grads), (ref, *ref_grads),
                                         (pt, *pt_grads), strict=True):
                    err = (a.float() - r).abs().max().item()
                    bound = 2 * (p.float() - r).abs().max().item() + 1e-3
                    row[f"{name}_err"], row[f"{name}_bound"] = err, bound
                    row["ok"] &= err <= bound
                rows.append(row)
                print({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in row.items()},
                      flush=True)
                del q, k, v, do, low, got, grads, ref_in, ref, ref_grads, pt_in, pt, pt_grads
                if device == "cuda":
                    torch.cuda.empty_cache()
    with open(out / "checks.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{sum(r['ok'] for r in rows)} of {len(rows)} checks within the rule", flush=True)
    return rows


def host_side_at_real_size(device: str) -> None:
    """What the GPU run does on the host at N = 16,384, timed: inputs, range and block tables,
    and the work model at 4,096 (printed, it explains the benchmark's bounds)."""
    step("host side at real sizes")
    t0 = time.perf_counter()
    ctx = synthetic_batch(4, 16384, device=device)
    plan = HeadPlan.parse("paper", 1, 12).layer(0)
    names, tables = layer_tables(plan, ctx)
    blocks = tables.blocks(64, 64)
    print(f"N=16384: tables {names}, block table {tuple(blocks.qb_index.shape)}, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    ctx = synthetic_batch(4, 4096, device=device)
    for text in ("paper", "*:0,4,8=match-self/mask; *:1,5,9=sent/mask; *:2,6,10=next/synth; "
                 "*:3,7,11=prev/synth"):
        heads = head_work(HeadPlan.parse(text, 1, 12).layer(0), ctx)
        kinds = {(h["pattern"], h["kind"]): h for h in heads}
        print(f"work model N=4096 [{text[:40]}]: bound {layer_bound(heads):.1f}x; " + "; ".join(
            f"{p}/{k}: tiles {h['work_fraction']:.3f} cells {h['cell_fraction']:.4f} "
            f"flex {h['flex_tile_fraction']:.3f}" for (p, k), h in kinds.items()), flush=True)


def part1(out: Path, rehearse: bool, device: str) -> int:
    environment()
    autotune(out, rehearse, device)
    step("kernel tests")
    # the rehearsal only collects them: CI runs the same tests under the interpreter anyway
    rc = run([sys.executable, "-m", "pytest", "-q", "-x", "tests/test_fused.py"]
             + (["--collect-only"] if rehearse else []))
    host_side_at_real_size(device)
    if rehearse:
        checks = real_size_checks(out, (40, 100), (16, 32), (torch.float32,), device)
    else:
        checks = real_size_checks(out, (512, 4096, 16384), (32, 64, 128),
                                  (torch.float16, torch.bfloat16), device)
    return rc or int(not all(r["ok"] for r in checks))


def part2(out: Path, rehearse: bool) -> int:
    att, e2e = str(out / "attention.csv"), str(out / "e2e.csv")
    if rehearse:
        grids = [["--quick"]]
        e2e_args = students_args = ["--quick"]
    else:
        grids = [["--n", "512", "2048", "4096", "8192", "16384", "--d", "64", "--dtypes", "bfloat16"],
                 ["--n", "4096", "--d", "32", "128", "--dtypes", "bfloat16"]]
        e2e_args = ["--n", "512", "4096", "16384"]
        students_args = ["--precision", "bf16", "--budget", "2"]
    rc = 0
    for grid in grids:
        step("attention benchmark " + " ".join(grid))
        rc |= run([sys.executable, "bench/bench_attention.py", *grid, "--out", att])
    step("end-to-end benchmark")
    rc |= run([sys.executable, "bench/bench_e2e.py", *e2e_args, "--out", e2e])
    step("serving students")
    rc |= run([sys.executable, "bench/bench_students.py", *students_args, "--out",
               str(out / "students.csv")])
    step("tables and plots")
    rc |= run([sys.executable, "bench/plot.py", str(out)])
    packed = sorted(out.glob("*.png")) + [out / n for n in ("attention.md", "e2e.md")
                                          if (out / n).is_file()]
    with tarfile.open(out / "plots.tar.gz", "w:gz") as tar:
        for p in packed:
            tar.add(p, arcname=p.name)
    for p in packed:
        p.unlink()
    print(f"{len(packed)} plots and tables in plots.tar.gz", flush=True)
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="results folder (at most 8 files)")
    p.add_argument("--part", choices=["1", "2", "all"], default="all")
    p.add_argument("--rehearse", action="store_true", help="CPU rehearsal of every step")
    args = p.parse_args(argv)
    if not args.rehearse and not torch.cuda.is_available():
        print("no GPU here: use --rehearse", file=sys.stderr)
        return 2
    device = "cpu" if args.rehearse else "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / TUNED_FILE).is_file():  # part 2 launches with what part 1 tuned
        os.environ[fused.TUNED_ENV] = str((out / TUNED_FILE).resolve())
    with open(out / "session.log", "a", encoding="utf-8") as log:
        sys.stdout = Tee(sys.__stdout__, log)
        try:
            rc = 0
            if args.part in ("1", "all"):
                rc |= part1(out, args.rehearse, device)
            if args.part in ("2", "all"):
                rc |= part2(out, args.rehearse)
        finally:
            sys.stdout = sys.__stdout__
    print(f"session rc {rc}; files: {sorted(p.name for p in out.iterdir())}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
