"""Device choice and torchrun: the same `cvtool train` on one process or N.

Under `torchrun --nproc_per_node N` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
each process joins a process group (nccl on CUDA, gloo on the CPU), trains its shard of every
epoch through DistributedDataParallel, and sums its loss/accuracy counts with the others, so every
rank takes the same decisions (best checkpoint, LR drops, early stopping). Only rank 0 prints and
writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvtool.train.config import TrainError

__all__ = ["Runtime", "setup", "resolve_device"]


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """auto: CUDA when torch can use it, else the CPU; cuda: fail with the reason instead."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "cuda":
        raise TrainError("--device cuda: PyTorch sees no CUDA device (driver, GPU or CUDA build missing)")
    return torch.device("cpu")


@dataclass
class Runtime:
    """Where this process runs and who it is in the group (rank 0 of 1 without torchrun)."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around `model` (registers the parameters that require grad *now*: re-wrap after unfreezing)."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over the ranks (float64, so counts stay exact)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str) -> Runtime:
    """Join the torchrun group when launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world)
