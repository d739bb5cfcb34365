"""torchrun detection, in one place: training joins the process group, summarizing shards by
rank; each process takes the GPU of its local rank."""

from __future__ import annotations

import contextlib
import os


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_device():
    """The GPU of this process's local rank (cuda:0 outside torchrun), or the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group under torchrun (`backend`, by default NCCL on GPUs and gloo on
    CPUs); (rank, world size)."""
    rank, size = world()
    if size > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        return dist.get_rank(), dist.get_world_size()
    return rank, size


@contextlib.contextmanager
def process_group(backend: str | None = None):
    """`init_distributed` for the length of a with block, the group it made destroyed on the
    way out (one a caller made is left to the caller): a group left to the interpreter's exit
    can abort the process ("terminate called without an active exception": its threads are
    still joinable when they are destroyed)."""
    made = False
    if world()[1] > 1:
        import torch.distributed as dist

        made = not dist.is_initialized()
    rank, size = init_distributed(backend)
    try:
        yield rank, size
    finally:
        if made and dist.is_initialized():
            dist.destroy_process_group()
