"""The GPU flight in one command, rehearsed on CPU so that no device minute is spent on a mistake
a CPU could have caught.

    python bench/gpu_session.py OUT                  # GPU: the whole flight, under 8 minutes
    python bench/gpu_session.py OUT --steps e2e      # GPU: some steps again (a second call)
    python bench/gpu_session.py OUT --rehearse       # CPU: every step, small kernels (interpreter)

The steps, in order of value, each in a process of its own under its own time cap (STEPS; the caps
sum under FLIGHT_LIMIT_S, and the flight gives a step no more than what is left of it):
environment (versions, GPU, the host side at N = 16,384); kernel-tests (tests/test_fused.py on
the compiled kernels, ATTNSUM_COMPILED=1); checks (the kernel against the fp32 reference at real
sizes, fp16 and bf16, D 32/64/128, N 512/4,096/16,384, forward and every gradient, padding);
headline (bench/bench_attention.py: bf16, D 64, fwd and fwd+bwd, N 4,096 and 16,384, `paper` and
`paper-self` against SDPA flash, cuDNN and FlexAttention); e2e (bench/bench_e2e.py: teacher and
students end to end); autotune (the AOT-pruned space, with what time is left).

Every row is appended to its CSV as soon as it is measured, so a step stopped at its cap keeps
what it had. At most 8 files under OUT: session.log (everything printed, the summary last),
checks.csv, attention.csv, e2e.csv, tuning.csv, kernel_configs.json. Tables and plots are made
afterwards from the CSVs, on any machine (bench/plot.py OUT). It needs only what the GPU image has
(torch, triton, transformers, numpy, pytest) and runs from a checkout without installing. The
rehearsal runs the same steps on CPU: kernels under Triton's interpreter at small sizes, the host
side at the real sizes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

if "--rehearse" in sys.argv:  # the kernels run on CPU through Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from common import CLS_ID, ROOT, aot_table, pruned_space, synthetic_batch, write_csv  # noqa: E402

from attnsum.attention import HeadPlan, PatternContext, reference_attention  # noqa: E402
from attnsum.attention.triton_path import fused_layer_attention, layer_tables  # noqa: E402
from attnsum.attention.work import head_work, layer_bound  # noqa: E402
from attnsum.kernels import configs, fused  # noqa: E402

FLIGHT_LIMIT_S = 450  # the whole flight: one device call of at most 8 minutes, start excluded
STEPS = {  # name: time cap in seconds, in order of value
    "environment": 30,
    "kernel-tests": 100,
    "checks": 90,
    "headline": 110,
    "e2e": 50,
    "autotune": 60,
}
MAX_FILES = 8  # what a device call brings back
TUNED_FILE = "kernel_configs.json"
TUNING_FIELDS = ["arch", "dtype", "D", "N", "kernel", "block_m", "block_n", "num_warps",
                 "num_stages", "default", "ms", "chosen", "error"]
CHECK_FIELDS = ["N", "D", "dtype", "ok", "error"] + [f"{n}_{w}" for n in ("out", "dq", "dk", "dv")
                                                     for w in ("err", "bound")]


def step(title: str):
    print(f"\n== {title} ({time.strftime('%H:%M:%S')})", flush=True)


def run_capped(cmd: list[str], limit: float, log: Path, env: dict | None = None) -> int:
    """`cmd` in a process group of its own, its output appended to `log`; the whole group is
    killed at `limit` seconds (rc 124)."""
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                                  **(env or {})}, start_new_session=True)
        try:
            return p.wait(timeout=max(limit, 1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            f.write(f"\nstep stopped at its cap of {limit:.0f} s\n")
            return 124


def environment(out: Path, rehearse: bool, device: str) -> int:
    step("environment")
    print(f"python {platform.python_version()}, torch {torch.__version__}", flush=True)
    for mod in ("triton", "transformers", "numpy", "pytest"):
        try:
            print(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            print(f"{mod}: not installed")
    print(f"autotune space from {aot_table().relative_to(ROOT)}", flush=True)
    if torch.cuda.is_available():
        print(f"GPU {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=20).stdout.strip()
            print(f"nvidia-smi: {smi}")
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"nvidia-smi unavailable: {e}")
    else:
        print("no GPU: rehearsal on CPU")
    host_side_at_real_size(device)
    return 0


def kernel_tests(out: Path, rehearse: bool, device: str) -> int:
    """tests/test_fused.py on the compiled kernels (tests/conftest.py leaves the interpreter off
    under ATTNSUM_COMPILED=1); the rehearsal runs a few of them under the interpreter."""
    step("kernel tests")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fused.py"]
    if rehearse:
        return subprocess.run(cmd + ["-k", "mixed_in_one_launch and 17"], cwd=ROOT).returncode
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # the ahead-of-time compiles need no GPU (CI runs them); here every other test runs compiled
    return subprocess.run(cmd + ["-k", "not compile_for_hopper"], cwd=ROOT,
                          env={**env, "ATTNSUM_COMPILED": "1"}).returncode


def headline(out: Path, rehearse: bool, device: str) -> int:
    """The headline attention benchmark (bench/bench_attention.py), rows appended as measured."""
    step("headline attention benchmark")
    import bench_attention

    grid = ["--plans", "learned", "paper", "paper-self", "--modes", "fwd", "fwd+bwd",
            "--providers", "ours", "sdpa-flash", "sdpa-cudnn", "flex"]
    if rehearse:
        grid = ["--quick", *grid]
    else:
        grid = ["--n", "4096", "16384", "--d", "64", "--dtypes", "bfloat16", *grid]
    return bench_attention.main([*grid, "--out", str(out / "attention.csv")])


def e2e(out: Path, rehearse: bool, device: str) -> int:
    step("end-to-end benchmark")
    import bench_e2e

    grid = ["--quick"] if rehearse else ["--n", "512", "4096", "16384"]
    return bench_e2e.main([*grid, "--out", str(out / "e2e.csv")])


def summary(out: Path, results: list[tuple[str, int, float, float]]) -> str:
    """The closing table: each step's exit code, time and cap, and each result file's rows."""
    lines = ["| step | rc | seconds | cap |", "|---|---|---|---|"]
    lines += [f"| {n} | {rc} | {t:.0f} | {cap:.0f} |" for n, rc, t, cap in results]
    lines += ["", "| file | rows |", "|---|---|"]
    for p in sorted(out.iterdir()):
        rows = (sum(1 for _ in p.open()) - 1) if p.suffix == ".csv" else ""
        lines.append(f"| {p.name} | {rows} |")
    return "\n".join(lines)


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


def _write_tuning(out: Path, rows: list[dict], chosen: dict) -> None:
    """tuning.csv rewritten whole with the choices so far (chosen=True), and kernel_configs.json."""
    tmp = out / "tuning.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TUNING_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out / "tuning.csv")
    tmp = out / (TUNED_FILE + ".tmp")
    tmp.write_text(json.dumps(chosen) + "\n")
    tmp.replace(out / TUNED_FILE)


def autotune(out: Path, rehearse: bool, device: str, limit: float) -> int:
    """Time each kernel's configurations of the AOT-pruned space (bench/common.py
    `pruned_space`: compiled ahead of time with no spill, within shared memory, on tensor cores)
    on this GPU, in bf16 at D = 32, 64, 128, N = 4,096, twelve heads of the `paper` plan: the
    forward kernel by the forward, dQ and dK/dV by forward and backward with the other kernels
    at their defaults, for at most `limit` seconds. The fastest go to OUT/kernel_configs.json
    (read through ATTNSUM_KERNEL_CONFIGS, kernels/configs.py `tuned_config`), rewritten after each
    kernel, and every timing to OUT/tuning.csv as it is measured. The rehearsal tunes two
    candidates of each from the sm_90 rows, at a small size in fp32 under the interpreter."""
    step("autotune over the AOT-pruned space")
    cc = fused._capability(torch.device(device))
    arch = configs.arch_key(cc)
    if rehearse:
        space_arch, dims, dtype, B, N, reps = "sm_90", (16,), torch.float32, 2, 64, 1
    else:
        space_arch, dims, dtype, B, N, reps = arch, (32, 64, 128), torch.bfloat16, 4, 4096, 10
    dname = configs.DTYPE_NAMES[dtype]
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
                    if time.time() - t0 > limit:
                        break
                    fused.launch_config = (lambda kernel, d, c, dt, role=role, cfg=cfg:
                                           cfg if kernel == role else untuned(kernel, d, c, dt))
                    row = {"arch": arch, "dtype": dname, "D": D, "N": N, "kernel": role,
                           **cfg._asdict(), "chosen": False, "error": "",
                           "default": cfg == configs.default_config(role, D, cc)}
                    try:
                        row["ms"] = _time_ms(work["fwd" if role == "fwd" else "bwd"], reps, device)
                    except Exception as e:  # a launch failure is a finding, not a crash
                        row["ms"], row["error"] = float("inf"), str(e).splitlines()[0][:200]
                    rows.append(row)
                    write_csv(out / "tuning.csv", [row], TUNING_FIELDS)  # kept if stopped here
                    if row["ms"] < float("inf") and (best is None or row["ms"] < best["ms"]):
                        best = row
                if best is not None:
                    best["chosen"] = True
                    chosen.setdefault(arch, {}).setdefault(dname, {}).setdefault(str(D), {})[
                        role] = [best["block_m"], best["block_n"], best["num_warps"],
                                 best["num_stages"]]
                    _write_tuning(out, rows, chosen)
                    print(f"D={D} {role}: {best['block_m']}x{best['block_n']} "
                          f"w{best['num_warps']} s{best['num_stages']} {best['ms']:.3f} ms of "
                          f"{len(candidates)} candidates", flush=True)
    finally:
        fused.launch_config = untuned
    print(f"{sum(r['chosen'] for r in rows)} configurations chosen from {len(rows)} timed "
          f"in {time.time() - t0:.0f} s: {out / TUNED_FILE}", flush=True)
    return 0


def _padded(ctx: PatternContext, cut: float = 0.8) -> PatternContext:
    """The batch with its last document cut to `cut` of its length (right padding)."""
    valid = ctx.valid.clone()
    valid[-1, int(ctx.shape[1] * cut):] = False
    return PatternContext.from_bertsum(ctx.token_ids * valid, valid.long(), cls_id=CLS_ID)


def real_size_checks(out: Path, sizes, dims, dtypes, device: str) -> list[dict]:
    """The fused kernel against the fp32 dense reference, forward and dq/dk/dv with one shared
    upstream gradient, `paper` plan, padding: error <= 2x PyTorch's own error in that dtype
    + 1e-3 (the tolerance rule of attnsum/attention/__init__.py). Each case's row is appended to
    OUT/checks.csv when it is done; a case that raises (out of memory, a launch failure) is a row
    with its error, not a crash."""
    step("real-size checks: fused kernel vs fp32 reference")
    plan = HeadPlan.parse("paper", 1, 4).layer(0)
    rows = []
    for N in sizes:
        B = 2 if N <= 4096 else 1  # the reference holds (B, 4, N, N) fp32 probabilities
        ctx = synthetic_batch(B, N, device=device)
        ctx = _padded(ctx) if B > 1 else ctx
        for D in dims:
            for dtype in dtypes:
                row = {"N": N, "D": D, "dtype": str(dtype).replace("torch.", ""), "ok": True,
                       "error": ""}
                try:
                    row.update(_check_case(plan, ctx, B, N, D, dtype, device))
                except Exception as e:  # noqa: BLE001  (a finding, recorded in its row)
                    row.update(ok=False, error=f"{type(e).__name__}: {e}".splitlines()[0][:200])
                if device == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
                write_csv(out / "checks.csv", [row], CHECK_FIELDS)
                print({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in row.items()},
                      flush=True)
    print(f"{sum(r['ok'] for r in rows)} of {len(rows)} checks within the rule", flush=True)
    return rows


def _check_case(plan, ctx, B: int, N: int, D: int, dtype, device: str) -> dict:
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
    row = {"ok": True}
    for name, a, r, p in zip(("out", "dq", "dk", "dv"), (got, *grads), (ref, *ref_grads),
                             (pt, *pt_grads), strict=True):
        err = (a.float() - r).abs().max().item()
        bound = 2 * (p.float() - r).abs().max().item() + 1e-3
        row[f"{name}_err"], row[f"{name}_bound"] = err, bound
        row["ok"] &= err <= bound  # NaN fails
    return row


def checks(out: Path, rehearse: bool, device: str) -> int:
    if rehearse:
        rows = real_size_checks(out, (40, 100), (16, 32), (torch.float32,), device)
    else:
        rows = real_size_checks(out, (512, 4096, 16384), (32, 64, 128),
                                (torch.float16, torch.bfloat16), device)
    return int(not all(r["ok"] for r in rows))


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


STEP_FUNCTIONS = {"environment": environment, "kernel-tests": kernel_tests, "checks": checks,
                  "headline": headline, "e2e": e2e,
                  "autotune": lambda out, rehearse, device: autotune(out, rehearse, device,
                                                                      STEPS["autotune"] - 15)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="results folder (at most 8 files)")
    p.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS),
                   help="steps to run, in the flight's order (default: all)")
    p.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # one step, in-process
    p.add_argument("--rehearse", action="store_true", help="CPU rehearsal of every step")
    args = p.parse_args(argv)
    if not args.rehearse and not torch.cuda.is_available():
        print("no GPU here: use --rehearse", file=sys.stderr)
        return 2
    device = "cpu" if args.rehearse else "cuda"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        return STEP_FUNCTIONS[args.step](out, args.rehearse, device)
    log = out / "session.log"
    deadline, results = time.time() + FLIGHT_LIMIT_S, []
    for name in [s for s in STEPS if s in args.steps]:
        left = deadline - time.time()
        cap = min(STEPS[name], left)
        if cap < 10:
            results.append((name, -1, 0.0, cap))
            continue
        t0 = time.time()
        rc = run_capped([sys.executable, str(Path(__file__).resolve()), str(out), "--step", name]
                        + (["--rehearse"] if args.rehearse else []), cap, log)
        results.append((name, rc, time.time() - t0, cap))
        print(f"{name}: rc {rc} in {time.time() - t0:.0f} s (cap {cap:.0f} s)", flush=True)
    table = summary(out, results)
    with open(log, "a", encoding="utf-8") as f:
        f.write("\n" + table + "\n")
    print(log.read_text(encoding="utf-8")[-6000:] if not args.rehearse else "")
    print(table)
    files = sorted(p.name for p in out.iterdir())
    if len(files) > MAX_FILES:
        print(f"{len(files)} files under {out}: more than {MAX_FILES} come back", file=sys.stderr)
        return 1
    return int(any(rc != 0 for _, rc, _, _ in results))


if __name__ == "__main__":
    sys.exit(main())
