"""One precision setting for every command that runs a model: ``auto``, ``fp32``, ``bf16``,
``fp16`` (CUDA only).

Low precision is autocast: weights, optimizer state and checkpoints stay fp32; matrix products
run in the low dtype, reductions (softmax, LayerNorm, losses) in fp32 as autocast decides.
``auto`` picks bf16 on CUDA GPUs that support it and on CPUs with native bf16 matrix units
(AMX-BF16 or AVX512-BF16), fp32 elsewhere: on a CPU without them bf16 is emulated and many
times slower than fp32. The environment variable ATTNSUM_AUTO_PRECISION (fp32 or bf16) sets
what ``auto`` means on a machine: e.g. the whole test suite in bf16 on a CPU without native bf16
(slow but correct), or in fp32 on one with it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a precision is resolved: the CLI's help needs none
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_PRECISION = "auto"  # of every command and of the Python API
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
AUTO_ENV = "ATTNSUM_AUTO_PRECISION"


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native bf16 features among NATIVE_BF16_FLAGS (Linux /proc/cpuinfo; none
    found elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16" or "fp16" (resolved, never "auto")
    device_type: str  # "cpu" or "cuda"
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self):
        """The context that runs a forward (and its loss) in this precision."""
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        return f"precision {self.name} on {self.device_type} ({self.reason})"


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision a command runs: resolved once per command (`resolve`) and
    handed down to what runs the model."""

    device: torch.device
    precision: Precision

    @classmethod
    def resolve(cls, device: str | None, precision: str = DEFAULT_PRECISION) -> Runtime:
        """`resolve_device(device)` and `resolve_precision` for it: a mistake in either is one
        ConfigError before any model loads."""
        dev = resolve_device(device)
        return cls(dev, resolve_precision(precision, dev))


def resolve_device(name: str | None = None) -> torch.device:
    """The device a command runs on: `name` ("cpu", "cuda", "cuda:N"), or by default the GPU of
    this process's local rank where there is one, else the CPU (distributed.local_device).
    Raises ValueError with one line for a name this machine cannot run."""
    import torch

    from .distributed import local_device

    if name is None:
        return local_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: this machine's torch sees no CUDA GPU; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: there are {torch.cuda.device_count()} GPUs "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def resolve_precision(name: str, device: str | torch.device) -> Precision:
    """Resolve a precision setting for the device a command runs on (`resolve_device`), once per
    command (or `Summarizer`): what runs a model takes the `Precision`. Raises ValueError for one
    the device cannot run."""
    import torch

    dev = torch.device(device).type
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    if name == "fp16" and dev != "cuda":
        raise ConfigError("fp16 needs a CUDA GPU; on CPU use bf16 or fp32")
    if name != "auto":
        return Precision(name, dev, "asked for")
    forced = os.environ.get(AUTO_ENV)
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ConfigError(f"{AUTO_ENV}={forced!r}: use fp32 or bf16")
        return Precision(forced, dev, f"auto: {AUTO_ENV}={forced}")
    if dev == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", dev, "auto: the GPU supports bf16")
        return Precision("fp16", dev, "auto: the GPU lacks bf16")
    flags = cpu_bf16_flags()
    if flags:
        return Precision("bf16", dev, f"auto: the CPU has native bf16 ({', '.join(flags)})")
    return Precision("fp32", dev, "auto: the CPU has no native bf16 (no "
                     f"{' or '.join(NATIVE_BF16_FLAGS)}), where bf16 is emulated and slow")
