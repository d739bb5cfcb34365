"""Attention benchmark: one layer of a patterned model against general attention kernels.

    python bench/bench_attention.py                      # GPU: the full grid, bench/results/<gpu>/
    python bench/bench_attention.py --quick --device cpu # seconds, the harness check CI runs

Providers: ours (fused Triton), ours-torch (the PyTorch path), eager, sdpa-flash,
sdpa-efficient, sdpa-cudnn, sdpa-math (each backend forced), flex (FlexAttention, compiled,
with a per-head BlockMask and score_mod equivalent to the plan; its BlockMask build time is
reported as its own row), fa2 (FlashAttention-2, when installed). Dense providers compute every
head as a learned head: that is what a general kernel does with a patterned model.

Plans: learned (every head learned), paper (every head patterned), paper-self (paper with
match-self, whose tokens with no match attend only themselves), half (half of each). Every
provider's output is checked against the dense reference before it is timed. Each row is
appended to --out as soon as it is measured. A provider that would materialize score tensors
past --max-score-gib, that fails its check, or that runs out of memory gets a row with the reason
in `note` and no time. FlexAttention is compiled once per (plan, N) with dynamo's recompile limit
raised; its first call at the timed size (compilation included) is a row of its own, mode
"compile".

CSV schema (one row per provider x plan x mode x shape x dtype), appended to --out:
provider, plan, mode, B, H, N, D, dtype, ms, ms_p20, ms_p80, tflops_dense, tflops_needed,
gbps, peak_mb, max_err, device, torch, triton, commit, cell_fraction, work_fraction,
flex_tile_fraction, work_bound, note (the work model of attnsum/attention/work.py, means over the
layer's heads; a dense provider's row carries the learned plan's)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

if "--quick" in sys.argv:  # the kernels run on CPU through Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from common import commit, device_name, result_dir, synthetic_batch, write_csv  # noqa: E402

from attnsum.attention import HeadPlan, layer_allowed, reference_attention, torch_attention  # noqa: E402
from attnsum.attention.triton_path import fused_layer_attention  # noqa: E402
from attnsum.attention.work import head_work, layer_bound  # noqa: E402

FIELDS = ["provider", "plan", "mode", "B", "H", "N", "D", "dtype", "ms", "ms_p20", "ms_p80",
          "tflops_dense", "tflops_needed", "gbps", "peak_mb", "max_err", "device", "torch",
          "triton", "commit", "cell_fraction", "work_fraction", "flex_tile_fraction", "work_bound",
          "note"]
PLANS = ("learned", "paper", "paper-self", "half")
PROVIDERS = ("ours", "ours-torch", "eager", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn",
             "sdpa-math", "flex", "fa2")
MATERIALIZING = ("eager", "sdpa-math")  # providers that hold (B, H, N, N) scores
MODES = ("fwd", "bwd", "fwd+bwd")


def plan_for(name: str, H: int):
    if name == "half":  # the first half of the heads patterned as in the paper, the rest learned
        groups = ("match/mask", "sent/mask", "next/synth", "prev/synth")
        text = "; ".join(f"*:{h}={groups[h % 4]}" for h in range(H // 2))
        return HeadPlan.parse(text, 1, H).layer(0)
    if name == "paper-self":
        groups = ("match-self/mask", "sent/mask", "next/synth", "prev/synth")
        text = "; ".join(f"*:{h}={groups[h % 4]}" for h in range(H))
        return HeadPlan.parse(text, 1, H).layer(0)
    return HeadPlan.parse({"learned": "none", "paper": "paper"}[name], 1, H).layer(0)


def allowed_pairs(plan, ctx) -> torch.Tensor:
    """(H,) float64: allowed (query, key) pairs per head over the batch, from the range tables
    (O(B N) memory, so N = 16,384 costs nothing); patterns without a range form fall back to
    their dense mask."""
    B, N = ctx.shape
    learned = float(N) * ctx.valid.sum().double()  # every row attends the valid keys
    out = []
    for spec in plan:
        if spec is None:
            out.append(learned)
        elif spec.pat.has_ranges:
            out.append(ctx.ranges(spec.pat).counts().sum().double())
        else:
            out.append(layer_allowed((spec,), ctx).sum().double())
    return torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in out])


def needed_flops(plan, ctx) -> tuple[float, float]:
    """(softmax FLOPs per unit D, synth bytes factor): 4 * allowed pairs for softmax heads, 2 *
    allowed pairs for synthesized heads (forward; backward counted as 2.5x by the caller)."""
    allowed = allowed_pairs(plan, ctx)
    total = 0.0
    for h, s in enumerate(plan):
        total += (2.0 if s is not None and s.mode == "synth" else 4.0) * float(allowed[h])
    return total, float(sum(1 for s in plan if s is not None and s.mode == "synth"))


def dense_provider(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"sdpa-flash": SDPBackend.FLASH_ATTENTION,
                "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}

    if name == "eager":
        def eager(q, k, v):
            p = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), -1)
            return p @ v

        return eager
    if name == "fa2":
        from flash_attn import flash_attn_func

        return lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2)).transpose(1, 2)
    backend = backends[name]

    def sdpa(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return sdpa


def flex_provider(plan, ctx, H: int, device):
    """FlexAttention with a per-head mask_mod and score_mod equivalent to the plan."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from attnsum.attention.reference import head_kinds
    from attnsum.attention.registry import get_pattern
    from attnsum.kernels.configs import HeadKind

    B, N = ctx.shape
    kinds = head_kinds(plan, device)
    learned, synth = int(HeadKind.LEARNED), int(HeadKind.SYNTH)  # plain ints for dynamo
    names = sorted({s.pattern for s in plan if s is not None})
    mods = [get_pattern(n).mask_mod(ctx) for n in names]
    which = torch.tensor([0 if s is None else names.index(s.pattern) for s in plan], device=device)
    valid = ctx.valid

    def mask_mod(b, h, q, kv):
        out = valid[b, kv]
        for i, m in enumerate(mods):
            out = torch.where((kinds[h] != learned) & (which[h] == i), m(b, h, q, kv), out)
        return out

    def score_mod(score, b, h, q, kv):
        return torch.where(kinds[h] == synth, torch.zeros_like(score), score)  # uniform

    for limit in ("recompile_limit", "cache_size_limit"):  # one compile per (plan, N), not 8 in all
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    t0 = time.perf_counter()
    block_mask = create_block_mask(mask_mod, B, H, N, N, device=device)
    build_ms = 1e3 * (time.perf_counter() - t0)
    compiled = torch.compile(flex_attention, dynamic=False)
    return (lambda q, k, v: compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)), build_ms


def timer(fn, device) -> tuple[float, float, float]:
    if device == "cuda":
        import triton

        ms = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
        return tuple(ms)
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    times.sort()
    return times[1], times[0], times[-1]


def run(args) -> list[dict]:
    device = args.device
    rows = []
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    meta = {"device": device_name(device),
            "torch": torch.__version__, "triton": triton_version, "commit": commit()}
    work = {}  # (plan, N) -> the work model's fractions (independent of D and dtype)
    contexts = {}  # N -> (timed batch, checked batch), built once
    # Provider by provider, FlexAttention (which compiles) last: a run stopped by a time cap
    # keeps every other provider's rows at every size.
    providers = sorted(args.providers, key=lambda p: p == "flex")
    for provider in providers:
        dense = provider not in ("ours", "ours-torch", "flex")
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for D in args.d:
                for N in args.n:
                    if N not in contexts:
                        ctx = synthetic_batch(args.b, N, device=device)
                        contexts[N] = (ctx, ctx if N <= args.check_max_n
                                       else synthetic_batch(args.b, 256, device=device))
                    ctx, check_ctx = contexts[N]
                    for plan_name in args.plans:
                        plan = plan_for(plan_name, args.h)
                        key = ("learned" if dense else plan_name, N)
                        if key not in work:
                            work[key] = plan_work(plan_for(key[0], args.h), ctx)
                            print(f"work model {key[0]} N={N}: {work[key]}")
                        got = bench_one(provider, plan_name, plan, ctx, check_ctx, args, D, N,
                                        dtype, device, {**meta, **work[key]})
                        write_csv(Path(args.out), got, FIELDS)  # kept if the run is stopped
                        rows += got
    return rows


def plan_work(plan, ctx) -> dict:
    """The work model's means over the layer's heads (attnsum/attention/work.py) and the bound
    1 / work fraction it implies over dense attention."""
    heads = head_work(plan, ctx)
    mean = {f: sum(h[f] for h in heads) / len(heads)
            for f in ("cell_fraction", "work_fraction", "flex_tile_fraction")}
    return {**mean, "work_bound": layer_bound(heads)}


def bench_one(provider, plan_name, plan, ctx, check_ctx, args, D, N, dtype, device, meta):
    B, H = args.b, args.h
    dense = provider not in ("ours", "ours-torch", "flex")
    if dense and plan_name != "learned":
        return []  # a dense kernel runs every plan as "learned": measured once
    nan = float("nan")
    base = {"provider": provider, "plan": plan_name, "B": B, "H": H, "N": N, "D": D,
            "dtype": str(dtype).replace("torch.", ""), "ms": nan, "ms_p20": nan, "ms_p80": nan,
            "tflops_dense": nan, "tflops_needed": nan, "gbps": nan, "peak_mb": nan,
            "max_err": nan, **meta, "note": ""}

    def skipped(reason: str, mode: str = "") -> dict:
        print(f"skip {provider} {plan_name} {mode} N={N} D={D} {dtype}: {reason}"[:300],
              file=sys.stderr)
        return {**base, "mode": mode, "note": reason[:200]}

    if provider in MATERIALIZING:
        gib = B * H * N * N * torch.finfo(dtype).bits / 8 / 2**30
        if gib > args.max_score_gib:
            return [skipped(f"its (B, H, N, N) scores take {gib:.1f} GiB, over --max-score-gib "
                            f"{args.max_score_gib:g}")]
    extra_rows = []

    def make(c):
        if provider == "ours":
            return lambda q, k, v: fused_layer_attention(q, k, v, plan, c)
        if provider == "ours-torch":
            return lambda q, k, v: torch_attention(q, k, v, plan, c)
        if provider == "flex":
            fn, build_ms = flex_provider(plan, c, H, device)
            extra_rows.append(build_ms)
            return fn
        return dense_provider(provider)

    try:
        # Correctness first, at this size or at a small one when the reference would not fit.
        cN = check_ctx.shape[1]
        q, k, v = (torch.randn(B, H, cN, D, device=device, dtype=dtype) for _ in range(3))
        ref_plan = plan if not dense else plan_for("learned", H)
        ref = reference_attention(q, k, v, ref_plan, check_ctx)[0].float()
        got = make(check_ctx)(q, k, v).float()
        max_err = (got - ref).abs().max().item()
        tol = 1e-2 if dtype != torch.float32 else 1e-3
        if not max_err <= tol:
            raise AssertionError(f"max error {max_err:.3g} > {tol}")
        del q, k, v, ref, got
        extra_rows.clear()
        fn = make(ctx)
    except Exception as e:  # noqa: BLE001  (a provider missing or wrong here is reported, not timed)
        _free(device)
        return [skipped(f"{type(e).__name__}: {e}".splitlines()[0])]
    flops_unit, n_synth = needed_flops(plan if not dense else plan_for("learned", H), ctx) \
        if N <= args.check_max_n else (None, sum(s is not None and s.mode == "synth" for s in plan))
    out_rows = []
    try:
        q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        do = torch.randn(B, H, N, D, device=device, dtype=dtype)
    except torch.OutOfMemoryError:
        _free(device)
        return [skipped("out of memory for the inputs")]
    for mode in args.modes:
        try:
            out_rows += _time_mode(fn, mode, q, k, v, do, base, provider, flops_unit, n_synth,
                                   dense, max_err, device)
        except torch.OutOfMemoryError:
            _free(device)
            out_rows.append(skipped("out of memory", mode))
        except Exception as e:  # noqa: BLE001  (a launch failure at this size is a finding)
            _free(device)
            out_rows.append(skipped(f"{type(e).__name__}: {e}".splitlines()[0], mode))
    if provider == "flex" and extra_rows:
        out_rows.append({**base, "provider": "flex-blockmask-build", "mode": "build",
                         "ms": extra_rows[0], "ms_p20": extra_rows[0], "ms_p80": extra_rows[0],
                         "max_err": max_err})
    for r in out_rows:
        print(f"{r['provider']:>22} {r['plan']:>10} {r['mode']:>8} N={N:>6} D={D:>3} "
              f"{r['dtype']:>8} {r['ms']:9.3f} ms  {r['tflops_dense']:7.2f} TFLOP/s(dense-eq) "
              f"{r['note']}", flush=True)
    return out_rows


def _free(device) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def _sync(device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_mode(fn, mode, q, k, v, do, base, provider, flops_unit, n_synth, dense, max_err,
               device) -> list[dict]:
    """The rows of one mode: its timing, and for FlexAttention its first call (compilation
    included) as a row of its own."""
    B, H, N, D = q.shape
    if mode == "fwd":  # inference: no autograd graph
        qi, ki, vi = (x.detach() for x in (q, k, v))

        def step():
            with torch.no_grad():
                return fn(qi, ki, vi)
    elif mode == "bwd":
        o = fn(q, k, v)
        step = lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)  # noqa: E731
    else:
        step = lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do)  # noqa: E731
    rows = []
    if provider == "flex":
        t0 = time.perf_counter()
        step()
        _sync(device)
        first = 1e3 * (time.perf_counter() - t0)
        rows.append({**base, "provider": "flex-first-call", "mode": mode, "ms": first,
                     "ms_p20": first, "ms_p80": first, "max_err": max_err,
                     "note": "compilation included"})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms, p20, p80 = timer(step, device)
    factor = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]
    dense_flops = 4.0 * B * H * N * N * D * factor
    needed = flops_unit * D * factor if flops_unit is not None else float("nan")
    elt = torch.finfo(q.dtype).bits // 8
    gbps = (2 * B * n_synth * N * D * elt / (ms * 1e-3) / 1e9) if (n_synth and not dense) else 0.0
    rows.append({**base, "mode": mode, "ms": ms, "ms_p20": p20, "ms_p80": p80,
                 "tflops_dense": dense_flops / (ms * 1e-3) / 1e12,
                 "tflops_needed": needed / (ms * 1e-3) / 1e12, "gbps": gbps,
                 "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0,
                 "max_err": max_err})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny CPU grid: checks the harness")
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--h", type=int, default=12)
    p.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--d", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    p.add_argument("--plans", nargs="+", default=list(PLANS))
    p.add_argument("--providers", nargs="+", default=None,
                   help="default: " + " ".join(PROVIDERS))
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--check-max-n", dest="check_max_n", type=int, default=4096,
                   help="check correctness at the timed size up to this N, else at N=256")
    p.add_argument("--max-score-gib", dest="max_score_gib", type=float, default=16.0,
                   help="skip eager and math SDPA where their score tensor would pass this")
    p.add_argument("--out", default=None, help="CSV to append to")
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.b, args.h, args.n, args.d = "cpu", 1, 4, [48], [16]
        args.dtypes = ["float32"]
        args.providers = args.providers or ["ours", "ours-torch", "eager", "sdpa-math"]
    args.providers = args.providers or list(PROVIDERS)
    if args.out is None:
        args.out = str(result_dir(args.device) / "attention.csv")
    rows = run(args)
    timed = [r for r in rows if not r["note"]]
    print(f"{len(rows)} rows appended to {args.out}, {len(timed)} timed")
    return 0 if timed else 1


if __name__ == "__main__":
    sys.exit(main())
