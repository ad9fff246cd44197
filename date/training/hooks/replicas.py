"""DDP replicas must end identical: compared at the end, and said in every rank's log."""
from __future__ import annotations

import logging

from date.runtime.distributed import barrier, replica_checksums
from date.training.hooks.base import Hook

log = logging.getLogger("date.trainer")


class ReplicaCheck(Hook):
    """After the last iteration, once rank 0 has written its final files (a barrier): each rank logs its weights'
    checksum; rank 0 says whether all agree. Nothing to compare in a single process."""

    def after_train(self, trainer) -> None:
        barrier()
        dist = trainer.run.dist
        if dist.world_size <= 1:
            return
        checksums = replica_checksums(trainer.model)
        log.info("Weights checksum of rank %d of %d: %s", dist.rank, dist.world_size, checksums[dist.rank])
        if dist.is_main and len(set(checksums)) == 1:
            log.info("Weights identical on all %d ranks (checksum %s)", dist.world_size, checksums[0])
        elif dist.is_main:
            log.error("Weights differ between ranks (checksums by rank: %s): the DDP replicas diverged.", checksums)
