"""Process-group set-up for `torchrun` (DistributedDataParallel) and the reductions training needs.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op and training
runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stn_serve.contract import DEVICES
from stn_serve.errors import InvalidInputError


@dataclass
class Context:
    """rank, world_size, local_rank and the device this process trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and shows progress."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; "cuda" without CUDA is an error."""
    if name not in DEVICES:
        raise InvalidInputError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device cuda was asked for but torch sees no CUDA device")
    return torch.device(
        "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"
    )


def start(device_name: str) -> Context:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) if there is one."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def stop(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: torch.Tensor, context: Context) -> torch.Tensor:
    """Element-wise sum of `values` over all processes (values itself when alone)."""
    if context.distributed:
        values = values.clone()
        dist.all_reduce(values)
    return values


def sync_buffers(module: torch.nn.Module, context: Context) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every process before evaluating."""
    if context.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)
