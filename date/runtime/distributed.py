"""Process-group set-up for DDP from torchrun-style environment variables.

torchrun exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT itself; inside a submitit
job (``hydra/launcher=slurm`` with tasks_per_node / nodes > 1) :func:`env_info` first derives them
from SLURM's variables with submitit's TorchDistributedEnvironment. With WORLD_SIZE unset or 1
everything here is a no-op and the run is a plain single process.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from typing import Optional

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


log = logging.getLogger(__name__)


def export_submitit_env() -> None:
    """Inside a submitit job, export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT for its tasks.

    A no-op outside submitit (``submitit.JobEnvironment()`` raises there) and when the variables are
    already set (torchrun, or a second call). CUDA_VISIBLE_DEVICES is left as SLURM set it: each task
    picks ``cuda:<local rank>`` among the job's GPUs (see resolve_device).
    """
    if "RANK" in os.environ:
        return
    try:
        import submitit

        submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # not running inside a submitit job
        return
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def env_info() -> DistInfo:
    """Rank, world size and local rank from the environment (all 0 / 1 when not distributed); inside
    a submitit job they are first exported from SLURM's variables."""
    export_submitit_env()
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


class DeviceError(ValueError):
    """The ``device`` asked for is not available to this process (a bad input: exit code 2, before any work)."""


def resolve_device(device: str, *, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local rank> if CUDA is available, else cpu; DeviceError for a device this process cannot use.

    A process that sees a single GPU (SLURM binding one GPU per task) uses it whatever its local rank.
    """
    asked = device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device == "cuda":
            device = f"cuda:{0 if count == 1 else local_rank}"
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            seen = (f"sees {count} CUDA device(s), cuda:0..cuda:{count - 1}" if count else
                    f"sees no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
                    f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
            raise DeviceError(f"device={asked}: this process {seen}, so it cannot use {device}. Pass device=auto "
                              "(a GPU if there is one, else the CPU) or device=cpu, or run on a machine with the GPU.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device=mps: Apple's Metal backend is not available here. Pass device=auto or device=cpu.")
    return torch.device(device)


def autocast_dtype(amp: str, device: torch.device, *, bf16_supported: Optional[bool] = None) -> Optional[torch.dtype]:
    """The autocast dtype of ``amp`` (auto | true | false) on ``device``; None: no autocast.

    "auto" autocasts on CUDA only (CPU autocast is slow and changes CPU numbers). On CUDA the dtype is bf16
    where the GPU computes it natively (Ampere and later); fp16 elsewhere (V100, T4: bf16 is emulated
    there, several times slower), which needs a gradient scaler (the trainer adds one). On the CPU
    ``amp=true`` means bf16, the one dtype CPU autocast supports well. ``bf16_supported`` overrides the
    device query (tests).
    """
    if amp == "false" or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        return torch.bfloat16
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if bf16_supported else torch.float16


def init_distributed(*, device: torch.device) -> DistInfo:
    """Join the process group when WORLD_SIZE > 1: NCCL for CUDA devices, gloo on CPU."""
    info = env_info()
    if info.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=info.rank, world_size=info.world_size)
    return info


def replica_checksums(module: torch.nn.Module) -> list[str]:
    """SHA-1 of each rank's parameters, indexed by rank (one entry when not distributed).

    DDP keeps the replicas identical by averaging gradients; different checksums at the end of
    training mean they diverged (a parameter outside the autograd graph, a rank-dependent update).
    Buffers are left out: BatchNorm running statistics legitimately differ between ranks.
    """
    digest = hashlib.sha1()
    for name, param in module.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    mine = digest.hexdigest()[:16]
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
