"""Distributed set-up under torchrun: ranks, the process group, DDP wrapping and the epoch's collectives.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`process_group` initializes the default process
group (gloo on CPU, nccl on CUDA) unless the caller did so already, and tears down the one it
created. Outside torchrun every function here answers as for a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = [
    "check_same_start",
    "group_active",
    "init_distributed",
    "is_distributed",
    "process_group",
    "rank",
    "reduce_epoch",
    "world_size",
    "wrap_model",
]


def is_distributed() -> bool:
    """True when launched by torchrun with more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def group_active() -> bool:
    """True when more than one process shares an initialized process group."""
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def init_distributed(device: str = "cpu") -> torch.device:
    """Initialize the default process group from torchrun's environment; return this rank's device.

    Backend gloo for CPU, nccl for CUDA (where the device becomes ``cuda:LOCAL_RANK``). Does
    nothing to the process group when not distributed or when it is already initialized.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The ``torch.device`` this process should train on.
    """
    target = torch.device(device)
    if not is_distributed():
        return target
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return target


@contextmanager
def process_group(device: str) -> Iterator[torch.device]:
    """:func:`init_distributed` for the ``with`` block (yielding the device), then destroy the group it created."""
    owns_group = is_distributed() and not (dist.is_available() and dist.is_initialized())
    target = init_distributed(device)
    try:
        yield target
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def check_same_start(start_epoch: int, device: torch.device, out_dir: Path) -> None:
    """Fail unless every rank resumes from the same epoch (``out_dir`` must be shared), or they would deadlock.

    Raises:
        RuntimeError: another rank starts from another epoch.
    """
    points = torch.tensor([start_epoch, -start_epoch], dtype=torch.int64, device=device)
    dist.all_reduce(points, op=dist.ReduceOp.MAX)
    if int(points[0]) != -int(points[1]):
        raise RuntimeError(
            f"rank {rank()} resumes from epoch {start_epoch} but another rank does not: out_dir "
            f"{out_dir} must be one folder shared by all ranks"
        )


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` (on this rank's CUDA device, or the CPU)."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def reduce_epoch(totals: torch.Tensor, model: torch.nn.Module) -> None:
    """Sum ``totals`` over the ranks in place and give every rank rank 0's buffers (batch-norm statistics)."""
    dist.all_reduce(totals)
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
