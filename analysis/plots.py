"""Paper figures: val AP against epochs, one panel per schedule, a mean line and a 95% t-band per variant.

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies) and
each variant also gets its own marker and line style, so the figure survives grayscale printing.
Figures are drawn on matplotlib's object API with an Agg canvas: no global backend is chosen, so
importing this module leaves the caller's (a notebook's, say) as it was.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.compare import Report

# Okabe & Ito (2008); fixed per assigner so a method keeps its colour across figures.
OKABE_ITO = {"orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}
ASSIGNER_STYLE = {"o2m": (OKABE_ITO["orange"], "s", ":"), "o2o": (OKABE_ITO["blue"], "o", "--"),
                  "dual": (OKABE_ITO["vermillion"], "^", "-"), "dual_topk": (OKABE_ITO["purple"], "D", "-.")}
EXTRA_STYLES = [(OKABE_ITO[c], m, ls) for c, m, ls in (("green", "v", "-"), ("sky_blue", "P", "--"),
                                                          ("black", "X", ":"), ("yellow", "*", "-."))]
RC = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
      "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "pdf.fonttype": 42}


def convergence_figure(report: Report, out_dir: Path, *, stem: str = "convergence") -> list[Path]:
    """Write ``<stem>.png`` (200 dpi) and ``<stem>.pdf`` (vector); returns their paths."""
    panels, styles = report.panels, variant_styles(report)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(3.4 * len(panels) + 0.2, 3.3), layout="constrained")
        FigureCanvasAgg(fig)  # files only (no display on clusters), without touching pyplot's backend
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            rows = [r for r in report.results if r.variant.panel == panel]
            for r in rows:
                color, marker, ls = styles[r.label]
                c = r.curve
                ax.plot(c.epochs, 100 * c.mean, color=color, marker=marker, linestyle=ls, markersize=3.5,
                        linewidth=1.4, label=f"{r.label} (n={r.n})", markevery=max(1, len(c.epochs) // 12))
                band = ~np.isnan(c.low)  # [E] epochs with >= 2 runs
                if band.any():
                    ax.fill_between(c.epochs[band], 100 * c.low[band], 100 * c.high[band], color=color, alpha=0.18,
                                    linewidth=0)
            for r in rows:  # the speed-up target: the baseline's final mean AP
                if r.variant.is_baseline and r.target_ap is not None:
                    ax.axhline(100 * r.target_ap, color=styles[r.label][0], linewidth=0.9, linestyle=(0, (1, 2)),
                               label=f"{r.label} final AP")
            epoch_ticks(ax, {int(e) for r in rows for e in r.curve.epochs})
            ax.set_ylim(bottom=0.0)  # AP >= 0: a t-band reaching below 0 is cut at the axis
            ax.set_xlabel("epoch")
            ax.set_ylabel("val AP (COCO, %)")
            ax.set_title(f"schedule {panel}")
            ax.grid(True, linewidth=0.4, alpha=0.5)
        shared_legend(fig, axes[0])
        return save_png_pdf(fig, out_dir, stem)  # inside the rc context: the PDF keeps its Type 42 fonts


def epoch_ticks(ax, epochs) -> None:
    """Every epoch on the x axis when there are few (a 1x schedule's 12), else about 8 integer ticks."""
    if len(epochs) <= 13:
        ax.set_xticks(sorted(epochs))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))


def shared_legend(fig: Figure, axes) -> None:
    """One legend for all panels, below them, so that it never hides a curve."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    longest = max((len(label) for label in handles), default=0)  # long variant names: fewer columns
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", frameon=False,
               ncol=max(1, min(len(handles), 3, 90 // max(longest, 1))))


def variant_styles(report: Report) -> dict[str, tuple[str, str, str]]:
    """{variant label: (colour, marker, line style)}: the assigner's own, a spare one for a second variant of
    an assigner; the same label keeps its style in every panel and figure."""
    styles, extra = {}, iter(EXTRA_STYLES * 4)
    for result in report.results:
        if result.label not in styles:
            styles[result.label] = ASSIGNER_STYLE.get(result.variant.assigner) if not _is_extra(result, styles) \
                else next(extra)
    return styles


def _is_extra(result, styles: dict) -> bool:
    """A second variant of the same assigner (e.g. another branch weighting) needs its own style."""
    style = ASSIGNER_STYLE.get(result.variant.assigner)
    return style is None or style in styles.values()


def save_png_pdf(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.png`` (200 dpi) and ``<stem>.pdf`` (vector) in ``out_dir``; returns their paths."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    return paths
