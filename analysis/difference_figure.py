"""The paired difference as a picture: val AP of each variant minus its POTO baseline against epochs
(``difference.png`` / ``.pdf``), one panel per schedule as in ``convergence.png``.

Per variant: the mean over seed pairs of (variant - POTO) in AP points with its t-band (none at epochs with
fewer than two pairs), and one thin translucent line per seed pair. A variant whose seeds do not pair with
POTO's gets no per-seed lines: the difference of the two mean curves with a Welch band, labelled unpaired.
The zero line is "no difference". Colours and markers per variant are convergence.png's (analysis/plots.py),
drawn on matplotlib's object API with an Agg canvas, so the caller's backend is left alone.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.compare import Report, VariantResult
from analysis.plots import RC, epoch_ticks, save_png_pdf, shared_legend, variant_styles


def difference_figure(report: Report, out_dir: Path, *, stem: str = "difference") -> list[Path]:
    """Write ``<stem>.png`` (200 dpi) and ``<stem>.pdf`` (vector); returns their paths. The bands are the
    report's confidence level (95% by default)."""
    panels, styles = report.panels, variant_styles(report)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(3.4 * len(panels) + 0.2, 3.3), layout="constrained")
        FigureCanvasAgg(fig)  # files only, without touching pyplot's backend
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            rows = [r for r in report.results if r.variant.panel == panel and r.difference is not None]
            for r in rows:
                _draw_variant(ax, r, styles[r.label])
            if not rows:
                ax.text(0.5, 0.5, "no variant with a POTO baseline\nin this schedule", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
            ax.axhline(0.0, color="black", linewidth=0.8, zorder=1)
            epoch_ticks(ax, {int(e) for r in rows for e in r.difference.epochs})
            ax.set_xlabel("epoch")
            ax.set_ylabel("Δ val AP vs POTO (AP points)")
            ax.set_title(f"schedule {panel}")
            ax.grid(True, linewidth=0.4, alpha=0.5)
        shared_legend(fig, axes[0])
        return save_png_pdf(fig, out_dir, stem)  # inside the rc context: the PDF keeps its Type 42 fonts


def _draw_variant(ax, r: VariantResult, style: tuple[str, str, str]) -> None:
    color, marker, ls = style
    c = r.difference
    for diffs in r.seed_differences.values():  # paired only: one faint line per seed pair
        epochs = sorted(diffs)
        ax.plot(epochs, [100 * diffs[e] for e in epochs], color=color, linewidth=0.6, alpha=0.35, zorder=2)
    what = f"{r.n} pairs" if r.paired else f"unpaired, {r.n} vs {len(r.baseline.runs)} runs, Welch band"
    ax.plot(c.epochs, 100 * c.mean, color=color, marker=marker, linestyle=ls, markersize=3.5, linewidth=1.4,
            label=f"{r.label} − {r.baseline.label} ({what})", markevery=max(1, len(c.epochs) // 12), zorder=3)
    band = ~np.isnan(c.low)  # [E] epochs with >= 2 pairs (unpaired: >= 2 runs a side)
    if band.any():
        ax.fill_between(c.epochs[band], 100 * c.low[band], 100 * c.high[band], color=color, alpha=0.18,
                        linewidth=0)
