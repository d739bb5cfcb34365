"""Launch configurations of the fused kernels (kernels/fused.py): the defaults, checked ahead
of time for sm_80 and sm_90 (bench/aot_check.py), and the configurations a GPU session's
autotuning chose (bench/gpu_session.py), looked up by architecture, dtype and head dimension.
Also the names every bench and test uses for the kernels' roles, for dtypes and for head kinds."""

from __future__ import annotations

import functools
import json
import os
from enum import IntEnum
from typing import NamedTuple

import torch

# The kernels by function name, and the role each plays (the AOT tables name them without the
# leading underscore: `role_of` takes either).
KERNEL_ROLES = {"_fwd_kernel": "fwd", "_bwd_dq_kernel": "dq", "_bwd_dkdv_kernel": "dkdv"}
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
TUNED_ENV = "ATTNSUM_KERNEL_CONFIGS"  # a JSON file of tuned configs (bench/gpu_session.py)


class HeadKind(IntEnum):
    """A head's kind as plans (attention/plan.py), the kernels' `kinds` tensors, the references,
    benches and tests all encode it."""

    LEARNED = 0  # softmax of q k^T over every valid key
    MASK = 1  # softmax of q k^T over the keys its pattern allows
    SYNTH = 2  # uniform over the keys its pattern allows: reads no q or k


def role_of(kernel: str) -> str:
    """"fwd", "dq" or "dkdv" for "_fwd_kernel" or "fwd_kernel" and so on."""
    return KERNEL_ROLES["_" + kernel.lstrip("_")]


class LaunchConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int = 3


def arch_key(cc: int | None) -> str:
    """The key of a compute capability in tuned-config tables: "sm_90", or "cpu" for the
    interpreter."""
    return "cpu" if cc is None else f"sm_{cc}"


@functools.lru_cache(maxsize=8)
def _tuned(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tuned_config(kernel: str, D: int, cc: int | None, dtype: str) -> LaunchConfig | None:
    """The configuration the GPU session's autotuning chose (bench/gpu_session.py writes
    ``kernel_configs.json``: {arch: {dtype: {D: {kernel: [BLOCK_M, BLOCK_N, warps, stages]}}}}),
    read from the file that ATTNSUM_KERNEL_CONFIGS names; None without one or without an entry."""
    path = os.environ.get(TUNED_ENV)
    if not path:
        return None
    entry = _tuned(path).get(arch_key(cc), {}).get(dtype, {}).get(str(D), {}).get(kernel)
    return None if entry is None else LaunchConfig(*entry)


def default_config(kernel: str, D: int, cc: int | None) -> LaunchConfig:
    """The untuned choice for `kernel` ("fwd", "dq" or "dkdv") at head dimension D on compute
    capability `cc`. Each compiles with no register spill, within shared memory, with
    tensor-core dots for fp16 and bf16 and a software-pipelined loop (bench/aot_check.py; its
    table: bench/results/aot/kernels.csv).

    What holds the registers: the fp32 accumulators (forward: O, BLOCK_M x D; dQ: BLOCK_M x D;
    dK/dV: two of BLOCK_N x D) and the score tile with its probabilities (BLOCK_M x BLOCK_N),
    spread over 32 x num_warps threads. dK/dV at D > 64 holds 2 x 64 x 128 fp32 accumulators:
    8 warps there (4 spill on sm_80). On sm_80, 64 x 64 dK/dV blocks pass 255 registers, so its
    key blocks are 32. On sm_90 a wgmma tile has 64 rows, and dK/dV's transposed products
    (P^T dO, dS^T Q) have BLOCK_N rows: BLOCK_N = 64 keeps every dot on wgmma. At D = 128 on
    sm_90, 64 x 64 with 8 warps spills under Triton 3.6 (the GPU image's) and 128 x 64 does not,
    under 3.6 or 3.9 (bench/results/aot/kernels.csv and kernels-triton-3.6.csv). Small blocks
    under the CPU interpreter keep tests quick and give small shapes several blocks."""
    if cc is None:
        return LaunchConfig(16, 16, 4)
    if kernel == "dkdv":
        if cc < 90:
            return LaunchConfig(64, 32, 8 if D > 64 else 4)
        return LaunchConfig(128, 64, 8) if D > 64 else LaunchConfig(64, 64, 4)
    return LaunchConfig(64, 64, 4) if D <= 64 else LaunchConfig(64, 32, 4)


def launch_config(kernel: str, D: int, cc: int | None, dtype: torch.dtype) -> LaunchConfig:
    """The tuned configuration where the GPU session chose one (`tuned_config`), else the
    default (`default_config`)."""
    return (tuned_config(kernel, D, cc, DTYPE_NAMES[dtype])
            or default_config(kernel, D, cc))
