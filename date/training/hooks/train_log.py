"""The training's log line and train/* metrics: every ``log_every`` iterations and at the last one."""
from __future__ import annotations

import logging
import math

from date.runtime.logs import train_line
from date.training.hooks.base import Hook
from date.training.state import LogWindow, StepOutput

log = logging.getLogger("date.trainer")


class TrainLog(Hook):
    """Every ``every`` iterations (and at the last): the log line (ETA, epoch, iteration, losses, lr, img/s) and
    the train/* metrics of the iterations since the previous one (the logging window, ``state.window``), averaged;
    train/loss also into the run's metrics and loss history (the convergence figure)."""

    def __init__(self, every: int):
        self.every = every
        self.train_seconds = 0.0  # training time of this process (data included; evaluation, saving not)
        self.window_seconds = 0.0  # of the window

    def after_step(self, trainer, step: StepOutput) -> None:
        trainer.state.window.add(step.losses, step.values, step.images)
        self.train_seconds += step.seconds
        self.window_seconds += step.seconds
        g = trainer.state.global_iter
        if g % self.every == 0 or g == trainer.total_iters:
            self._log_window(trainer, step)

    def _log_window(self, trainer, step: StepOutput) -> None:
        """The log line and the tracker's train/* metrics of the window; then a new window."""
        state, window, losses = trainer.state, trainer.state.window, step.losses
        g = state.global_iter
        img_s = window.images / max(self.window_seconds, 1e-9)
        means = {k: v / window.count for k, v in window.sums.items()}
        per_iter = self.train_seconds / max(g - trainer.start_iter, 1)
        log.info(train_line(eta_s=per_iter * (trainer.total_iters - g),
                            epoch=(state.epoch + 1, math.ceil(trainer.total_iters / trainer.iters_per_epoch)),
                            iteration=(g, trainer.total_iters),
                            loss=means.pop("total"), terms={k: means[k] for k in losses.terms}, lr=step.lr,
                            img_per_s=img_s))
        train_loss = window.sums["total"] / window.count
        metrics = {"train/loss": train_loss, "train/lr": step.lr, "train/img_per_s": img_s}
        metrics.update({f"train/{k}": v for k, v in means.items()})
        metrics.update({f"train/branch_weight/{b}": w for b, w in losses.branch_weights.items()})
        trainer.run.tracker.log_metrics(metrics, step=g)
        trainer.run.tracker.flush()
        state.metrics["train/loss"] = train_loss
        state.loss_history.append([g, train_loss])
        state.window = LogWindow()
        self.window_seconds = 0.0
