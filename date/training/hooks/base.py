"""What a hook is: an object the loop calls at fixed points (detectron2's HookBase)."""
from __future__ import annotations

from date.training.state import StepOutput


class Hook:
    """A part of training that acts at the loop's fixed points; each method does nothing unless overridden.

    ``trainer`` is the :class:`date.training.trainer.Trainer` that runs the loop: its ``state``, ``run`` (run dir,
    device, rank, tracker), ``model``, ``cfg`` and ``done`` are what hooks read.
    """

    def before_train(self, trainer) -> None:
        """Once, before the first step of this process (after a resume)."""

    def before_step(self, trainer) -> None:
        """Before each step; ``trainer.state`` is that of the iteration boundary."""

    def after_step(self, trainer, step: StepOutput) -> None:
        """After each step; ``trainer.state.global_iter`` / ``iter_in_epoch`` count it."""

    def after_epoch(self, trainer) -> None:
        """After each epoch (or the last iteration); ``trainer.state.epoch`` counts it."""

    def after_train(self, trainer) -> None:
        """Once, after the last iteration and its epoch's hooks (not when training raised)."""
