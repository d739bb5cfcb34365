"""Ahead-of-time check of the fused kernels (kernels/fused.py) for real GPUs, on a machine with no
GPU and no driver: every kernel compiled by Triton down to a cubin for each target, with the
arguments its launcher really passes, and the compiled code read as a kernel author reads
`ptxas -v`.

    python bench/aot_check.py [--targets 80,90] [--dtypes fp16,bf16] [--dims 16,32,64,128]
                              [--space default|all] [--out bench/results/aot/kernels.csv]

How the arguments are found: the launchers `_forward` and `_backward` run on CPU tensors of the
real shapes (B=4, H=12, N=512: twelve heads of a BERT layer over 512 word pieces, learned and
patterned heads mixed) with each kernel replaced by a recorder, so the tensors, integers,
constexprs and launch options are exactly what a launch would pass; Triton's own binder for the
target then derives the signature, the specializations (16-byte alignment, divisibility) and the
options, and `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` builds it.

Per row: kernel, target, dtype, D, block sizes, warps, stages, whether it is the launcher's
default, compiled or not (with the error), shared memory against the target's limit, registers
and spill bytes (the per-thread stack and local memory, where spills go, read by cuobjdump from
the cubin Triton built; both tools ship inside the Triton wheel), the tensor-core
instruction kind the dots lowered to (wgmma, mma or none) and whether the kernel's loads are
software-pipelined (cp.async or TMA in the PTX). Exits 1 when a default configuration fails to
compile, exceeds shared memory or spills.

What it proves: the kernels build for these GPUs within their resources, with tensor-core dots.
What it cannot: speed and correctness on the hardware (bench/gpu_session.py does that on a GPU).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("aot_check: unset TRITON_INTERPRET; the check compiles for GPUs, it runs nothing")

import torch  # noqa: E402
import triton  # noqa: E402
from common import synthetic_batch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from attnsum.attention import HeadPlan  # noqa: E402
from attnsum.attention.triton_path import head_tables  # noqa: E402
from attnsum.kernels import configs, fused  # noqa: E402
from attnsum.kernels.configs import DTYPES, KERNEL_ROLES  # noqa: E402

SHARED_LIMIT = {80: 166_912, 90: 232_448, 100: 232_448}  # bytes of shared memory per block
B, H, N = 4, 12, 512
COLUMNS = ["kernel", "target", "dtype", "D", "block_m", "block_n", "num_warps", "num_stages",
           "default", "compiled", "shared_bytes", "shared_limit", "registers", "spill_bytes",
           "tensor_core", "pipelined", "error"]


@dataclass
class Launch:
    kernel: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the call."""

    def __init__(self, name: str, calls: list[Launch]):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(Launch(self.name, args, kwargs))


def record_launches(dtype: torch.dtype, D: int, cc: int,
                    config: configs.LaunchConfig | None = None) -> list[Launch]:
    """The three kernel launches of one forward and backward of a `paper`-plan layer (learned
    heads beside matching-token, intra-sentence and +-1 heads), as the launchers make them on a
    GPU of compute capability `cc`; `config` replaces the launcher's choice
    (fused.launch_config) for every kernel."""
    ctx = synthetic_batch(B, N)
    plan = HeadPlan.parse("paper", 1, H).layer(0)
    kinds, tabs, tables = head_tables(plan, ctx, "cpu")
    q, k, v = (torch.zeros(B, N, H, D, dtype=dtype).transpose(1, 2) for _ in range(3))
    calls: list[Launch] = []
    saved = {name: getattr(fused, name) for name in (*KERNEL_ROLES, "_capability", "launch_config")}
    try:
        for name in KERNEL_ROLES:
            setattr(fused, name, _Recorder(name, calls))
        fused._capability = lambda device: cc
        if config is not None:
            fused.launch_config = lambda kernel, d, c, dt: config
        scale = D ** -0.5
        o, lse = fused._forward(q, k, v, kinds, tabs, tables, scale)
        fused._backward(q, k, v, o, lse, torch.zeros_like(o), kinds, tabs, tables, scale)
    finally:
        for name, fn in saved.items():
            setattr(fused, name, fn)
    return calls


def _resources(cubin: bytes) -> dict:
    """Registers and per-thread stack bytes (where spills go) of a cubin, read by the cuobjdump
    shipped with Triton from the very binary Triton built."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)],
                              capture_output=True, text=True).stdout
    regs, stack, local = (re.search(rf"\b{key}:(\d+)", text) for key in ("REG", "STACK", "LOCAL"))
    if regs is None:
        raise RuntimeError(f"cuobjdump gave no resource usage: {text[-300:]}")
    return {"registers": int(regs.group(1)),
            "spill_bytes": max(int(stack.group(1)) if stack else 0, int(local.group(1)) if local else 0)}


def compile_launch(launch: Launch, cc: int) -> dict:
    """Compile one recorded launch for sm_`cc` through Triton's own binder and options."""
    fn = getattr(fused, launch.kernel)
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    kwargs = launch.kwargs
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization,
                                                          options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    ptx = compiled.asm["ptx"]
    row = {"shared_bytes": compiled.metadata.shared, "num_stages": options.num_stages,
           **_resources(compiled.asm["cubin"])}
    kinds = [k for k, op in (("wgmma", "wgmma.mma_async"), ("mma", "mma.sync")) if op in ptx]
    row["tensor_core"] = "+".join(kinds) or "none"  # "wgmma+mma": some dots missed wgmma
    row["pipelined"] = bool(re.search(r"cp\.async|cp\.async\.bulk", ptx))
    return row


def config_space(D: int) -> list[configs.LaunchConfig]:
    """The autotune space before pruning: block sizes 32 to 128, 4 or 8 warps, 3 stages (tiles
    over 64 x 64 leave no room at D = 128)."""
    return [configs.LaunchConfig(bm, bn, warps) for bm in (32, 64, 128) for bn in (32, 64, 128)
            for warps in (4, 8) if D < 128 or bm * bn <= 64 * 64 or bn == 64]


def check(targets: list[int], dtypes: list[str], dims: list[int], space: str) -> list[dict]:
    rows = []
    for cc in targets:
        for dname in dtypes:
            for D in dims:
                for config in [None] + (config_space(D) if space == "all" else []):
                    for launch in record_launches(DTYPES[dname], D, cc, config):
                        kw = launch.kwargs
                        name = launch.kernel.strip("_")
                        used = configs.LaunchConfig(kw["BLOCK_M"], kw["BLOCK_N"],
                                                    kw["num_warps"], kw["num_stages"])
                        default = configs.default_config(KERNEL_ROLES[launch.kernel], D, cc)
                        if config is not None and used == default:
                            continue  # already a row of the default pass
                        row = {"kernel": name, "target": f"sm_{cc}", "dtype": dname, "D": D,
                               "block_m": used.block_m, "block_n": used.block_n,
                               "num_warps": used.num_warps, "num_stages": used.num_stages,
                               "default": used == default,
                               "shared_limit": SHARED_LIMIT[cc]}
                        try:
                            row.update(compile_launch(launch, cc), compiled=True, error="")
                        except Exception as e:  # a compile error is a finding, not a crash
                            row.update(compiled=False, error=str(e).splitlines()[0][:200])
                        rows.append(row)
                        print(_describe(row), flush=True)
    return rows


def _describe(r: dict) -> str:
    head = (f"{r['kernel']:>13} {r['target']} {r['dtype']} D={r['D']:<3} "
            f"{r['block_m']}x{r['block_n']} w{r['num_warps']}")
    if not r["compiled"]:
        return f"{head}: FAILED {r['error']}"
    return (f"{head} s{r['num_stages']}: {r['registers']} regs, {r['spill_bytes']} B spilled, "
            f"{r['shared_bytes']}/{r['shared_limit']} B shared, {r['tensor_core']}, "
            f"{'pipelined' if r['pipelined'] else 'not pipelined'}")


def problems(rows: list[dict]) -> list[str]:
    """What fails the check: a default configuration that does not compile, overflows shared
    memory or spills."""
    return [_describe(r) for r in rows if r["default"] and (
        not r["compiled"] or r["shared_bytes"] > r["shared_limit"] or r["spill_bytes"] > 0)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="80,90", help="compute capabilities (80: A100, 90: H100)")
    p.add_argument("--dtypes", default="fp16,bf16")
    p.add_argument("--dims", default="16,32,64,128", help="head dimensions")
    p.add_argument("--space", default="default", choices=["default", "all"],
                   help="the launcher's default configuration only, or the autotune space too")
    p.add_argument("--out", default=None, help="CSV file for the table")
    args = p.parse_args(argv)
    rows = check([int(x) for x in args.targets.split(",")], args.dtypes.split(","),
                 [int(x) for x in args.dims.split(",")], args.space)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    bad = problems(rows)
    for line in bad:
        print(f"aot_check: default configuration fails: {line}", file=sys.stderr)
    print(f"{len(rows)} compiles, {sum(r['compiled'] for r in rows)} built; "
          f"{len(bad)} default configuration(s) failing" + (f"; table: {args.out}" if args.out
                                                           else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
