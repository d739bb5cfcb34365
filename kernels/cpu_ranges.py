"""The CPU kernel of masked heads (kernels/range_attention.c): built once per machine with the C
compiler, loaded through ctypes, and used by the PyTorch path for inference on CPU
(attnsum/attention/torch_path.py). Without a compiler, or with ATTNSUM_CPU_KERNEL=0, the
PyTorch path computes the same heads as batched products (`available()` is False)."""

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

SOURCE = Path(__file__).with_name("range_attention.c")
DISABLE_ENV = "ATTNSUM_CPU_KERNEL"  # set to 0: never build or use the kernel
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


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
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"range_attention-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True,
                           text=True, check=True)
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return lib


@cache
def _library():
    """The loaded kernel, or None (disabled, no compiler, or a failed build: said once)."""
    if os.environ.get(DISABLE_ENV) == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(f"attnsum: the CPU kernel of masked heads did not build ({detail.strip()[:200]}); "
              "using the PyTorch path", file=sys.stderr)
        return None
    fn = lib.attnsum_range_attention
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, ptr, ptr, ptr, ctypes.c_int, i64, i64, i64, i64, ctypes.c_float,
                   ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def available() -> bool:
    return _library() is not None


def range_attention(q, k, v, out, lo, hi, perm, exclude, full, scale: float) -> None:
    """Softmax attention of every query of heads (q, k, v: (heads, B, N, D), contiguous, CPU,
    bf16 or fp32) over its range (lo, hi: (B, N) int32 in the order `perm` (B, N) int64 or
    None, minus itself where `exclude` (B, N) bool), written into `out` (same shape and dtype);
    rows where `full` ((B, N) bool, or None) is set are left as they are. Needs `available()`."""
    heads, B, N, D = q.shape
    dtype = q.dtype
    if dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"the CPU kernel takes bf16 or fp32, got {dtype}")
    for name, x in (("q", q), ("k", k), ("v", v), ("out", out)):
        if x.shape != q.shape or x.dtype != dtype or x.device.type != "cpu" or not x.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous CPU tensor of {tuple(q.shape)}, {dtype}")
    lo, hi = (x.contiguous().to(torch.int32) for x in (lo, hi))
    exclude = exclude.contiguous().to(torch.uint8)
    perm, full = (None if x is None else x.contiguous().to(dt)
                  for x, dt in ((perm, torch.int64), (full, torch.uint8)))
    failed = _library()(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                        int(dtype == torch.bfloat16), heads, B, N, D, scale,
                        lo.data_ptr(), hi.data_ptr(), 0 if perm is None else perm.data_ptr(),
                        exclude.data_ptr(), 0 if full is None else full.data_ptr(),
                        torch.get_num_threads())
    if failed:
        raise MemoryError("the CPU kernel of masked heads could not allocate its scratch rows")
