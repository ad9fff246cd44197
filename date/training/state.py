"""What the loop carries from step to step: the training state last.pth holds, and what one step hands its hooks.

:class:`TrainState` is written into last.pth under the keys it always had (``epoch``, ``iter_in_epoch``,
``global_iter``, ``eval_history``, ``metrics``, ``loss_history``, ``window``, ``elapsed_s``, ``level_counts``,
``level_history``: plain numbers,
strings, lists and dicts, so the file loads with ``weights_only=True``), and read back from any last.pth,
older ones included.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from date.criterion import Losses


@dataclass
class LogWindow:
    """The iterations since the last log line: how many, their images (all processes) and summed losses."""

    count: int = 0
    images: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # "total", each term, each branch's weighted sum

    def add(self, losses: Losses, values: list[float], images: int) -> None:
        """One step: ``values`` = [total, terms...] as floats, in the order of ``losses.terms``."""
        self.count += 1
        self.images += images
        for name, value in zip(["total", *losses.terms], values):
            self.sums[name] = self.sums.get(name, 0.0) + value
            if name != "total":
                branch = f"{name.split('/')[0]}/loss"  # weighted contribution of each branch
                self.sums[branch] = self.sums.get(branch, 0.0) + losses.weights[name] * value


@dataclass
class TrainState:
    """Where training stands; everything of the loop's future that is not in the model, optimiser or RNGs."""

    epoch: int = 0  # completed epochs (the step of val/* metrics)
    iter_in_epoch: int = 0  # iterations done in the current epoch
    global_iter: int = 0  # iterations done (the step of train/* metrics)
    eval_history: list[dict[str, Any]] = field(default_factory=list)  # [{"epoch", "images", "val/AP", ...}]
    metrics: dict[str, float] = field(default_factory=dict)  # the latest val/* and train/loss
    loss_history: list[list[float]] = field(default_factory=list)  # [[iteration, train/loss]] per log line
    window: LogWindow = field(default_factory=LogWindow)
    elapsed_s: float = 0.0  # wall time of this run's processes up to the last save (resumes add up)
    # positives per FPN level this epoch so far ({"images": n, "o2o": [5], "o2m": [5]}) and per finished epoch
    # (hooks/level_diagnostics.py)
    level_counts: dict[str, Any] = field(default_factory=dict)
    level_history: list[dict[str, Any]] = field(default_factory=list)

    def as_checkpoint(self) -> dict[str, Any]:
        """The state as last.pth's plain keys."""
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> TrainState:
        """The state in a last.pth; keys an older checkpoint lacks (loss_history) keep their defaults."""
        values = {f.name: saved[f.name] for f in fields(cls) if f.name in saved}
        if "window" in values:
            values["window"] = LogWindow(**values["window"])
        return cls(**values)


@dataclass
class StepOutput:
    """What one training step hands the hooks."""

    losses: Losses  # the step's losses (its terms, weights and branch weights)
    values: list[float]  # [total, terms...] as floats, the mean over processes
    images: int  # images of the step, all processes
    lr: float  # the lr of the FPN / head (parameter group 0) in this step
    seconds: float  # since the previous step ended (data loading included; evaluation and saving not)
