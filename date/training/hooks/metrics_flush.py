"""The last metrics sent to MLflow before the run ends; what cannot be sent stays in last.pth."""
from __future__ import annotations

import logging

from date.training.hooks.base import Hook

log = logging.getLogger("date.trainer")

FINAL_FLUSH_S = 120.0  # how long the end of training waits for an unreachable MLflow server


class MetricsFlush(Hook):
    """After the last iteration: send the tracker's pending metrics, retrying for up to FINAL_FLUSH_S; the ones still
    unsent are written into last.pth (finished) and sent by a rerun of the same command."""

    def after_train(self, trainer) -> None:
        tracker = trainer.run.tracker
        if not tracker.flush_until(FINAL_FLUSH_S):
            log.error("%d metrics could not be sent to MLflow (%s); they are kept in %s. Re-run the same "
                      "command once the server is back to send them.", tracker.num_pending, tracker.display_uri,
                      trainer.last_checkpoint)
