"""last.pth (date/runtime/checkpoint.py, written by :meth:`Trainer.save_last`): when it is written."""
from __future__ import annotations

from date.training.hooks.base import Hook
from date.training.state import StepOutput


class Checkpoints(Hook):
    """last.pth every ``every`` iterations within an epoch (0: never), at the end of each epoch but the last, and at
    the end of training marked finished (after model_final.pth and the last metrics sent). Rank 0 writes it."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self, trainer, step: StepOutput) -> None:
        state = trainer.state
        if (self.every and state.global_iter % self.every == 0 and state.iter_in_epoch < trainer.iters_per_epoch
                and not trainer.done):  # an epoch's end has its own checkpoint
            trainer.save_last()
            trainer.restart_clock()  # saving is not training time

    def after_epoch(self, trainer) -> None:
        if not trainer.done:
            trainer.save_last()

    def after_train(self, trainer) -> None:
        trainer.save_last(finished=True)
