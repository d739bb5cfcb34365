"""The served model's CPU kernels (kernels/cpu_kernels.c): built once per machine with the C
compiler and loaded through ctypes. `range_attention` runs masked heads for the PyTorch path at
inference (attnsum/attention/torch_path.py); `add_layer_norm` BERT's residual add and LayerNorm
in served models (attnsum/cpu_linear.py). Without a compiler, or with ATTNSUM_CPU_KERNEL=0,
`available()` is False and PyTorch's ops compute the same."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.c")
DISABLE_ENV = "ATTNSUM_CPU_KERNEL"  # set to 0: never build or use the kernels
# The instruction set compiled for: the build machine's by default; e.g. x86-64-v3 (AVX2) for a
# cache shared by CPUs of several kinds (the tests build the paths of CPUs without AVX-512 so).
MARCH_ENV = "ATTNSUM_CPU_MARCH"


def _flags() -> list[str]:
    return ["-O3", f"-march={os.environ.get(MARCH_ENV) or 'native'}", "-fopenmp", "-shared", "-fPIC"]


def _cpu_flags() -> str:
    """The CPU's feature flags: -march=native code is cached per kind of CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "attnsum" / "cpu-kernels"


def _build(compiler: str) -> Path:
    """The shared library for this source, compiler and CPU, compiled if not cached (written to
    a temporary name and renamed: processes building at once each finish with a whole file)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    flags = _flags()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(flags), _cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"cpu_kernels-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True,
                           text=True, check=True)
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return lib


@cache
def _library():
    """The loaded library, or None (disabled, no compiler, or a failed build: said once)."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(f"attnsum: the CPU kernels did not build ({detail.strip()[:200]}); "
              "using PyTorch's ops", file=sys.stderr)
        return None
    i64, ptr, i32, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.attnsum_range_attention.argtypes = [ptr, ptr, ptr, ptr, i32, i64, i64, i64, i64, f32,
                                            ptr, ptr, ptr, ptr, ptr, i32]
    lib.attnsum_range_attention.restype = i32
    lib.attnsum_add_layer_norm.argtypes = [ptr, i32, ptr, ptr, ptr, f32, ptr, ptr, i64, i64, i32]
    lib.attnsum_add_layer_norm.restype = None
    return lib


def available() -> bool:
    return _library() is not None


def range_attention(q, k, v, out, lo, hi, perm, exclude, scale: float) -> None:
    """Softmax attention of every query of heads (q, k, v: (B, N, heads, D), CPU, bf16 or fp32,
    any strides but the last) over its range (lo, hi: (B, N) int32 in the order `perm` (B, N)
    int64 or None, minus itself where `exclude` (B, N) bool), written into `out` (the same shape
    and dtype). Needs `available()`."""
    B, N, heads, D = q.shape
    dtype = q.dtype
    if dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"the CPU kernel takes bf16 or fp32, got {dtype}")
    for name, x in (("q", q), ("k", k), ("v", v), ("out", out)):
        if x.shape != q.shape or x.dtype != dtype or x.device.type != "cpu" or x.stride(-1) != 1:
            raise ValueError(f"{name}: expected a CPU tensor of {tuple(q.shape)}, {dtype}, its "
                             "last dimension contiguous")
    strides = torch.tensor([x.stride(i) for x in (q, k, v, out) for i in range(3)], dtype=torch.int64)
    lo, hi = (x.contiguous().to(torch.int32) for x in (lo, hi))
    exclude = exclude.contiguous().to(torch.uint8)
    perm = None if perm is None else perm.contiguous().to(torch.int64)
    failed = _library().attnsum_range_attention(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), int(dtype == torch.bfloat16),
        heads, B, N, D, scale, strides.data_ptr(), lo.data_ptr(), hi.data_ptr(),
        0 if perm is None else perm.data_ptr(), exclude.data_ptr(), torch.get_num_threads())
    if failed:
        raise MemoryError("the CPU kernel of masked heads could not allocate its scratch rows")


def add_layer_norm(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float, bf16_copy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LayerNorm(y + x) over the last dimension in fp32 (y bf16 or fp32, x, weight and bias
    fp32; CPU), and its bf16 copy when `bf16_copy`. Needs `available()`."""
    if y.dtype not in (torch.bfloat16, torch.float32) or x.dtype != torch.float32 or y.shape != x.shape:
        raise TypeError(f"add_layer_norm takes y bf16 or fp32 and x fp32 of one shape, got "
                        f"{y.dtype} {tuple(y.shape)} and {x.dtype} {tuple(x.shape)}")
    y, x = y.contiguous(), x.contiguous()
    weight, bias = (t.contiguous().float() for t in (weight, bias))
    out = torch.empty_like(x)
    copy = torch.empty_like(x, dtype=torch.bfloat16) if bf16_copy else None
    cols = x.shape[-1]
    _library().attnsum_add_layer_norm(y.data_ptr(), int(y.dtype == torch.bfloat16), x.data_ptr(),
                                      weight.data_ptr(), bias.data_ptr(), eps, out.data_ptr(),
                                      0 if copy is None else copy.data_ptr(), x.numel() // cols,
                                      cols, torch.get_num_threads())
    return out, copy
