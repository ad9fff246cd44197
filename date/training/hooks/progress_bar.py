"""The terminal's progress bar of the iterations (rank 0, when stderr is a terminal)."""
from __future__ import annotations

import sys

from tqdm import tqdm

from date.training.hooks.base import Hook
from date.training.state import StepOutput


class ProgressBar(Hook):
    """A tqdm bar: the loss and lr of each step, and the img/s of every ``log_every`` iterations (as the log line)."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.bar = None
        self.images, self.seconds = 0, 0.0  # since the bar last showed img/s

    def before_train(self, trainer) -> None:
        self.bar = tqdm(total=trainer.total_iters, initial=trainer.state.global_iter, dynamic_ncols=True,
                        desc="train", disable=not (trainer.run.dist.is_main and sys.stderr.isatty()))

    def after_step(self, trainer, step: StepOutput) -> None:
        self.bar.update(1)
        postfix = {"loss": f"{step.values[0]:.3f}", "lr": f"{step.lr:.1e}"}
        self.images += step.images
        self.seconds += step.seconds
        g = trainer.state.global_iter
        if g % self.log_every == 0 or g == trainer.total_iters:
            postfix["img_s"] = f"{self.images / max(self.seconds, 1e-9):.1f}"
            self.images, self.seconds = 0, 0.0
        self.bar.set_postfix(**postfix)

    def after_train(self, trainer) -> None:
        self.bar.close()
