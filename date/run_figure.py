"""The convergence figure of one training run: val AP by epoch (each evaluated branch) and the training loss.

Written by the trainer at the end of a run as ``<run dir>/convergence.png``; the study figures over many
runs and seeds are analysis/plots.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from date.runtime import checkpoint as ckpt

# (metric, label, colour): the inference branch in DATE's colour, the o2m diagnostic in FCOS's (analysis/plots.py)
CURVES = (("val/AP", "AP (inference branch)", "#D55E00"), ("val/AP50", "AP50 (inference branch)", "#E69F00"),
          ("val/o2m/AP", "AP (o2m branch + NMS)", "#0072B2"))


def write_run_figure(eval_history: Sequence[dict], loss_history: Sequence[Sequence[float]], path: Path, *,
                     title: str) -> Path:
    """``path`` (PNG, 150 dpi): val AP curves by epoch (left) and train/loss by iteration (right).

    Args:
        eval_history: [{"epoch": e, "val/AP": ..., ...}] as in eval_results.json.
        loss_history: [(iteration, train/loss)] of the logged windows.
        title: what ran (the run name).
    """
    # A bare Figure, not pyplot: no global backend is chosen for the process (a notebook importing the trainer
    # keeps its own), and nothing needs closing.
    with matplotlib.rc_context({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False}):
        fig = Figure(figsize=(8.0, 3.2), layout="constrained")
        ap_ax, loss_ax = fig.subplots(1, 2)
        for metric, label, colour in CURVES:
            points = [(h["epoch"], 100 * h[metric]) for h in eval_history if metric in h]
            if points:
                epochs, values = zip(*points)
                ap_ax.plot(epochs, values, marker="o", markersize=3, color=colour, label=label)
        ap_ax.set_xlabel("epoch")
        ap_ax.set_ylabel("val AP (COCO, %)")
        ap_ax.set_ylim(bottom=0.0)
        ap_ax.grid(True, linewidth=0.4, alpha=0.5)
        ap_ax.legend(frameon=False, fontsize=8)
        if loss_history:
            iterations, losses = zip(*loss_history)
            loss_ax.plot(iterations, losses, color="#000000", linewidth=1.2)
            loss_ax.set_yscale("log")
            loss_ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # ticks at 1, 2, 5, 10, 20 ...
            loss_ax.yaxis.set_major_formatter(ScalarFormatter())  # written 2, 5, 10 rather than 2x10^0, 5x10^0, 10^1
            loss_ax.yaxis.set_minor_formatter(NullFormatter())
        loss_ax.set_xlabel("iteration")
        loss_ax.set_ylabel("train loss (weighted sum)")
        loss_ax.grid(True, linewidth=0.4, alpha=0.5)
        fig.suptitle(title, fontsize=10)
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_atomic(path, lambda f: fig.savefig(f, dpi=150, format=Path(path).suffix[1:] or "png"))
    return path
