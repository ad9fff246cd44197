"""A stop signal acted on at an iteration boundary: last.pth written, then the signal's handler hands over."""
from __future__ import annotations

import logging

from date.runtime.preemption import CheckpointSignal, StopOnSignal
from date.training.hooks.base import Hook

log = logging.getLogger("date.trainer")


class StopSignal(Hook):
    """SLURM's checkpoint signal, or SIGTERM / Ctrl-C outside SLURM (date.runtime.preemption), asked for before each
    step and at the end of each epoch but the last (after its evaluation). Once received: last.pth holds the state
    of the iteration boundary (the batch not yet drawn is drawn after the resume), then submitit requeues the job, or
    the process says how to resume and exits. ``signal`` None: no signal is deferred (off the main thread)."""

    def __init__(self, signal: CheckpointSignal | StopOnSignal | None):
        self.signal = signal

    def before_step(self, trainer) -> None:
        if self._requested(trainer):
            self._hand_over(trainer)

    def after_epoch(self, trainer) -> None:
        if not trainer.done and self._requested(trainer):
            self._hand_over(trainer)

    def _requested(self, trainer) -> bool:
        return self.signal is not None and self.signal.requested(trainer.run.device)

    def _hand_over(self, trainer) -> None:
        trainer.save_last()
        state = trainer.state
        purpose = " for requeueing" if isinstance(self.signal, CheckpointSignal) else ""
        log.info("Checkpoint written%s: %s at epoch %d iter %d (global iteration %d/%d)", purpose,
                 trainer.last_checkpoint, state.epoch, state.iter_in_epoch, state.global_iter, trainer.total_iters)
        self.signal.hand_over()
