"""Data-parallel training under ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK): NCCL on GPUs, gloo on CPUs.

Every helper is a no-op (or the obvious answer) for a single process, so the loop reads the same either way.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ldm_minimal.utils import default_device


def init_distributed(device_spec: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) of this process; starts the process group under torchrun.

    device_spec: "auto" (the best available device) or a torch device string. Each rank of a CUDA run gets the
    GPU of its LOCAL_RANK.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = default_device() if device_spec == "auto" else torch.device(device_spec)
    if world_size == 1:
        return 0, 1, device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def shutdown(world_size: int) -> None:
    """End the process group of a multi-process run."""
    if world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world_size: int) -> None:
    """Wait for every rank (e.g. until the main process has written a checkpoint)."""
    if world_size > 1:
        dist.barrier()


def all_finite(x: Tensor, world_size: int) -> bool:
    """True when x is finite on every rank (every rank must stop together, or the others hang)."""
    flag = torch.tensor([1.0 if bool(torch.isfinite(x).all()) else 0.0], device=x.device)
    if world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Mean of the gradients over ranks (what DDP does), for the first stage's two-player step."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world_size


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel (it averages the gradients of what forward() computed)."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def ranks_in_sync(params: list[nn.Parameter], world_size: int) -> bool:
    """True when every rank holds the same trained weights (a checksum of them gathered from every rank)."""
    vec = torch.cat([p.detach().float().flatten() for p in params])
    total = torch.stack([vec.sum(), (vec * vec).sum()])
    gathered = [torch.zeros_like(total) for _ in range(world_size)]
    dist.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)
