"""Batching: padding collate, the deterministic sharded sampler, and the DataLoader builders.

Dimensions: B = images per batch, Hp / Wp = padded height / width (multiples of size_divisibility).
"""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import threading
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from date.runtime.distributed import DistInfo


def collate(batch: Sequence[tuple[torch.Tensor, dict]], *, size_divisibility: int = 128) -> tuple[torch.Tensor, list[dict]]:
    """Stack images into a zero-padded float Tensor[B, 3, Hp, Wp] (padding at bottom / right,
    Hp and Wp the smallest multiples of ``size_divisibility`` holding every image); targets as a list."""
    images, targets = zip(*batch)
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    hp = math.ceil(h / size_divisibility) * size_divisibility
    wp = math.ceil(w / size_divisibility) * size_divisibility
    out = images[0].new_zeros((len(images), images[0].shape[0], hp, wp))  # [B, 3, Hp, Wp]
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return out, list(targets)


def _mix(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Augmentation seed of dataset item ``index`` in ``epoch``: independent of rank, world size and workers."""
    return _mix(seed, epoch, index, 0xA06)


class TrainBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, augmentation_seed)`` for one epoch of one rank.

    The permutation depends on (seed, epoch) only, so all ranks share it; rank r takes every
    world_size-th element of its first ``world_size * (N // world_size)`` entries (equal shards,
    disjoint), then whole batches of ``batch_size`` (the incomplete last one is dropped). The first
    ``start_iter`` batches are skipped without loading anything (mid-epoch resume).
    ``len()`` is the full number of batches per epoch, including skipped ones.
    """

    def __init__(self, *, num_samples: int, batch_size: int, seed: int, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, start_iter: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.start_iter = start_iter
        self.per_rank = num_samples // world_size
        if self.per_rank < batch_size:
            raise ValueError(f"{num_samples} training images cannot give one full batch of {batch_size} per "
                             f"process with {world_size} process(es): lower batch_size or add images.")

    def __len__(self) -> int:
        return self.per_rank // self.batch_size

    def indices(self) -> list[int]:
        """Dataset indices of this rank for this epoch, in order (before batching)."""
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        perm = torch.randperm(self.num_samples, generator=g)[: self.per_rank * self.world_size]
        return perm[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        idx = self.indices()
        for b in range(self.start_iter, len(self)):
            batch = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in batch]


class EvalBatchSampler(Sampler[list[int]]):
    """In-order batches of this rank's shard (indices rank, rank + world_size, ...): every image is seen
    exactly once over all ranks; shards may differ by one image."""

    def __init__(self, *, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(len(self)):
            yield self.indices[b * self.batch_size : (b + 1) * self.batch_size]


def _exit_on_parents_sigterm() -> None:
    """A loader worker's SIGTERM: from the training process (the loader or multiprocessing's exit stopping it) it ends
    the worker, as torch's own handler does; from anyone else (a signal to the whole process group) it is left to the
    training process, which stops at an iteration boundary and shuts its workers down itself."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == os.getppid():
            os._exit(0)


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C, `timeout`, systemd, scancel and job supervisors signal the whole process group: the training
    # process decides; a worker that died of the signal would fail the batch being loaded. SIGTERM is blocked
    # and read by a thread, which knows its sender (a handler does not): the parent's still ends the worker,
    # as multiprocessing's exit joins the workers it terminates. The worker was born with both blocked
    # (SignalSafeLoader): a signal that came before this line waits, and SIGINT's is dropped here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    threading.Thread(target=_exit_on_parents_sigterm, name="sigterm-from-parent", daemon=True).start()
    # torch seeds each worker from the loader's generator; numpy / random follow it (augmentation
    # itself is seeded per sample, this only covers stray library randomness)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class SignalSafeLoader(DataLoader):
    """A DataLoader whose workers are forked with SIGINT and SIGTERM blocked, so that a signal to the process group
    in the moment between a worker's fork and its _seed_worker cannot kill it (the evaluation's loader starts its
    workers exactly when a stop is likely: a DataLoader worker killed by Terminated failed a stopped run). The
    training process gets the signals it held back as soon as its workers exist."""

    def __iter__(self):
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # the forks inherit it
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _loader(dataset: Dataset, batch_sampler: Sampler, *, num_workers: int, size_divisibility: int,
            generator_seed: int) -> DataLoader:
    return SignalSafeLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(generator_seed),
    )


def build_train_loader(dataset: Dataset, *, batch_size: int, seed: int, num_workers: int, dist: DistInfo = DistInfo(),
                       epoch: int = 0, start_iter: int = 0, size_divisibility: int = 128) -> DataLoader:
    """Loader of ONE training epoch of this process (``dist``: its rank among world_size): batches
    ``(images [B, 3, Hp, Wp], targets)``, the same for the same (seed, epoch, rank, world_size) whatever
    ``num_workers``. Iteration starts at batch ``start_iter``; ``len()`` is the full number of batches per epoch."""
    sampler = TrainBatchSampler(num_samples=len(dataset), batch_size=batch_size, seed=seed, epoch=epoch,
                                rank=dist.rank, world_size=dist.world_size, start_iter=start_iter)
    return _loader(dataset, sampler, num_workers=num_workers, size_divisibility=size_divisibility,
                   generator_seed=_mix(seed, epoch, dist.rank, 0x10AD))


def build_eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1,
                      size_divisibility: int = 128) -> DataLoader:
    """Loader over this rank's shard of ``dataset`` in order, last batch kept."""
    sampler = EvalBatchSampler(num_samples=len(dataset), batch_size=batch_size, rank=rank, world_size=world_size)
    return _loader(dataset, sampler, num_workers=num_workers, size_divisibility=size_divisibility,
                   generator_seed=_mix(rank, 0xE7A1))

