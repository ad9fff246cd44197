"""No overflowed weight is evaluated or saved (date/training/non_finite.py)."""
from __future__ import annotations

from date.training.hooks.base import Hook
from date.training.non_finite import check_weights


class WeightCheck(Hook):
    """After each epoch, before its evaluation and checkpoint: stop (NonFiniteLossError) if an update overflowed a
    weight (finite gradients, a huge lr). Every save checks them again (:meth:`Trainer.save_last`)."""

    def after_epoch(self, trainer) -> None:
        check_weights(trainer.model, global_iter=trainer.state.global_iter, last_checkpoint=trainer.last_checkpoint)
