"""Process-group set-up for DDP from torchrun-style environment variables.

torchrun (and the SLURM launcher, through submitit's TorchDistributedEnvironment) export RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE unset or 1 everything here is a
no-op and the run is a plain single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that logs, evaluates, checkpoints and talks to MLflow."""
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from the environment (all 0 / 1 when not distributed)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(*, device: torch.device) -> DistInfo:
    """Join the process group when WORLD_SIZE > 1: NCCL for CUDA devices, gloo on CPU."""
    info = env_info()
    if info.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=info.rank, world_size=info.world_size)
    return info


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, *, src: int = 0):
    """Send a picklable object from rank ``src`` to every rank (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
