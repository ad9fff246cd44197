"""The NMS-free claim as a picture (``python -m analysis.duplicates ... --show N``): one row per validation
image, four panels: FCOS without NMS, FCOS with NMS, DATE (its o2o branch, no NMS) and the ground truth.

Each detection is drawn in the colour of its outcome in the duplicate rate's own matching
(analysis.duplicates.match_detections): true positive, duplicate (a second hit on an object already taken
by a higher-scoring detection) or false positive; each panel's title counts its detections and duplicates.
This module only draws; analysis.duplicates runs the models and sorts the detections. Like analysis/plots.py
it uses matplotlib's object API on an Agg canvas, so the caller's backend is left alone.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from analysis.plots import OKABE_ITO, RC

# (edge colour, line width, line style) per outcome; the duplicates stand out: red and thickest. Every box
# also gets a dark halo (HALO) so that it reads on the images' own blues and oranges.
STYLE = {"true positive": (OKABE_ITO["yellow"], 1.0, "-"), "duplicate": ("#FF2020", 1.4, "-"),
         "false positive": ("#E0E0E0", 0.6, (0, (2, 1.5))), "ground truth": (OKABE_ITO["green"], 1.3, "-")}
HALO = [patheffects.withStroke(linewidth=2.2, foreground="black", alpha=0.6)]


@dataclass
class Panel:
    """One model's detections on one image, by outcome (boxes xyxy in the shown image's pixels)."""

    name: str  # "FCOS, no NMS"
    true_positives: np.ndarray  # [K1, 4]
    duplicates: np.ndarray  # [K2, 4]
    false_positives: np.ndarray  # [K3, 4]

    @property
    def detections(self) -> int:
        return len(self.true_positives) + len(self.duplicates) + len(self.false_positives)

    @property
    def title(self) -> str:
        return f"{self.name}: {self.detections} dets, {len(self.duplicates)} dup"


@dataclass
class ShownImage:
    image_id: int
    image: np.ndarray  # [H, W, 3] RGB in [0, 1]
    gt_boxes: np.ndarray  # [M, 4] xyxy
    panels: list[Panel]  # FCOS no NMS, FCOS NMS, DATE


def draw_figure(shown: Sequence[ShownImage], *, caption: str) -> Figure:
    """Rows = ``shown``, columns = its panels then the ground truth; ``caption`` says what is drawn (the score
    threshold) and goes on top."""
    columns = len(shown[0].panels) + 1
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(2.3 * columns, 2.45 * len(shown) + 0.8), layout="constrained")
        FigureCanvasAgg(fig)  # files only, without touching pyplot's backend
        axes = fig.subplots(len(shown), columns, squeeze=False)
        for row, item in zip(axes, shown):
            for ax, panel in zip(row, item.panels):
                _image(ax, item.image)
                for outcome, boxes in (("false positive", panel.false_positives),  # duplicates drawn last: on top
                                       ("true positive", panel.true_positives), ("duplicate", panel.duplicates)):
                    _boxes(ax, boxes, outcome)
                ax.set_title(panel.title, fontsize=8)
            _image(row[-1], item.image)
            _boxes(row[-1], item.gt_boxes, "ground truth")
            row[-1].set_title(f"ground truth (image {item.image_id}): {len(item.gt_boxes)} objects", fontsize=8)
        handles = [Line2D([], [], color=c, linewidth=w, linestyle=ls, label=name, path_effects=HALO)
                   for name, (c, w, ls) in STYLE.items()]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        fig.suptitle("\n".join(textwrap.wrap(caption, width=int(28 * columns))), fontsize=8)
    return fig


def save_figure(fig: Figure, out_dir: Path, *, stem: str = "duplicates_show") -> list[Path]:
    """Write ``<stem>.png`` (200 dpi) and ``<stem>.pdf`` (vector), as convergence_figure does; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    with matplotlib.rc_context(RC):
        fig.savefig(paths[0], dpi=200)
        fig.savefig(paths[1])
    return paths


def _image(ax, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    ax.imshow(image, interpolation="nearest", extent=(0, width, height, 0))  # pixel i spans [i, i + 1], as boxes do
    ax.set_axis_off()


def _boxes(ax, boxes: np.ndarray, outcome: str) -> None:
    colour, width, style = STYLE[outcome]
    for x0, y0, x1, y1 in boxes.tolist():
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=width,
                               linestyle=style, path_effects=HALO))
