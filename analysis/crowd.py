"""CrowdHuman's metrics in the convergence report, when the runs logged them (training on CrowdHuman-format data
logs val/crowd/AP, mMR, JI, recall at every evaluation): per variant the final values over seeds; against the POTO
baseline the same tests as the COCO metrics (paired by seed where the seed sets are equal, else Welch; Holm over
the four); and MR^-2 and JI against epoch (``crowd.png`` / ``.pdf``). MR^-2 is better when lower: its "better"
column counts the seeds where the variant's is lower.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import stats
from analysis.compare import Report, VariantResult, compare_metrics
from analysis.plots import RC, epoch_ticks, save_png_pdf, shared_legend, variant_styles
from analysis.runs import CROWD_METRICS, RunRecord
from analysis.tables import effect_cell, p_cell, summary_cell

LOWER_IS_BETTER = frozenset({"crowd/mMR"})
NAMES = {"crowd/AP": "AP", "crowd/mMR": "MR^-2", "crowd/JI": "JI", "crowd/recall": "recall"}
FIGURE_METRICS = ("crowd/mMR", "crowd/JI")


@dataclass
class CrowdResult:
    result: VariantResult  # the variant (label, runs, baseline) of the COCO report
    final: dict[str, stats.Summary]  # metric -> over the runs that logged it
    versus: dict[str, stats.Comparison]  # metric -> against the baseline
    holm: dict[str, Optional[float]]  # metric -> Holm-adjusted p over the four
    better: dict[str, Optional[int]]  # metric -> paired seeds where the variant is better (lower for MR^-2)


def final_value(run: RunRecord, metric: str) -> Optional[float]:
    """The metric at the run's last evaluation (the epoch of its last val/AP), None if not logged there."""
    return run.crowd_curves.get(metric, {}).get(max(run.curve))


def crowd_results(report: Report) -> list[CrowdResult]:
    """One entry per variant whose runs logged CrowdHuman metrics; [] when none did."""
    by_variant = {id(r.variant): r for r in report.results}
    out = []
    for result in report.results:
        finals = {m: [v for v in (final_value(r, m) for r in result.variant.runs) if v is not None]
                  for m in CROWD_METRICS}
        final = {m: stats.summarize(v, confidence=report.confidence) for m, v in finals.items() if v}
        if not final:
            continue
        versus = {}
        if result.baseline is not None and result.paired is not None:
            versus = compare_metrics(result, by_variant[id(result.baseline)], CROWD_METRICS, final_value,
                                     confidence=report.confidence)
        adjusted = stats.holm([versus[m].p if m in versus else None for m in CROWD_METRICS])
        holm = {m: p for m, p in zip(CROWD_METRICS, adjusted) if m in versus}
        better = {m: _better(m, c) for m, c in versus.items()}
        out.append(CrowdResult(result=result, final=final, versus=versus, holm=holm, better=better))
    return out


def _better(metric: str, comparison: stats.Comparison) -> Optional[int]:
    if comparison.wins is None:
        return None
    if metric in LOWER_IS_BETTER:
        return comparison.n_variant - comparison.wins - comparison.ties
    return comparison.wins


def to_markdown(results: list[CrowdResult]) -> str:
    lines = ["## CrowdHuman metrics", "",
             "CrowdHuman's AP, MR^-2 (lower is better), JI and recall at each run's last evaluation, ×100: mean ± "
             "sample std over seeds. Against the POTO baseline as the COCO metrics (paired by seed, else Welch); Holm "
             "over the four; better = seed pairs where the variant is better (for MR^-2: lower).", "",
             "| Variant | schedule | n | " + " | ".join(NAMES[m] for m in CROWD_METRICS) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in CROWD_METRICS) + " |"]
    lines += [f"| {c.result.label} | {c.result.variant.panel} | {c.result.n} | "
              + " | ".join(summary_cell(c.final.get(m)) for m in CROWD_METRICS) + " |" for c in results]
    compared = [c for c in results if c.versus]
    if compared:
        lines += ["", "| Variant | baseline | schedule | metric | Δ [95% CI] | p | Holm p | better |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for c in compared:
            for i, m in enumerate(m for m in CROWD_METRICS if m in c.versus):
                head = (f"{c.result.label}{'' if c.result.paired else ' (unpaired)'} | {c.result.baseline.label} | "
                        f"{c.result.variant.panel}") if i == 0 else "| |"
                better = c.better[m]
                lines.append(f"| {head} | {NAMES[m]} | {effect_cell(c.versus[m])} | {p_cell(c.versus[m].p)} | "
                             f"{p_cell(c.holm.get(m))} | {'–' if better is None else f'{better}/{c.versus[m].n_variant}'} |")
    return "\n".join(lines) + "\n"


def to_json(results: list[CrowdResult]) -> list[dict]:
    def comparison(c: stats.Comparison) -> dict:
        return {"delta": c.delta, "ci": c.ci, "p": c.p, "paired": c.paired, "n": c.n_variant}
    return [{"label": c.result.label, "schedule": c.result.variant.panel, "n": c.result.n,
             "final": {m: {"mean": s.mean, "std": s.std, "ci": s.ci} for m, s in c.final.items()},
             "versus_baseline": {m: {**comparison(v), "holm_p": c.holm.get(m), "better": c.better.get(m)}
                                 for m, v in c.versus.items()},
             "lower_is_better": sorted(LOWER_IS_BETTER)} for c in results]


def crowd_figure(report: Report, results: list[CrowdResult], out_dir: Path) -> list[Path]:
    """``crowd.png`` / ``.pdf``: MR^-2 and JI (mean over seeds with the 95% t-band) against epoch, one row per
    schedule."""
    styles, panels = variant_styles(report), sorted({c.result.variant.panel for c in results})
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(6.8, 3.0 * len(panels) + 0.3), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(panels), len(FIGURE_METRICS), squeeze=False)
        for row, panel in zip(axes, panels):
            for ax, metric in zip(row, FIGURE_METRICS):
                epochs = set()
                for c in (c for c in results if c.result.variant.panel == panel):
                    curves = [r.crowd_curves[metric] for r in c.result.variant.runs if metric in r.crowd_curves]
                    if not curves:
                        continue
                    curve = stats.mean_curve(curves)
                    color, marker, ls = styles[c.result.label]
                    ax.plot(curve.epochs, 100 * curve.mean, color=color, marker=marker, linestyle=ls, markersize=3.5,
                            linewidth=1.4, label=f"{c.result.label} (n={len(curves)})")
                    band = ~np.isnan(curve.low)
                    if band.any():
                        ax.fill_between(curve.epochs[band], 100 * curve.low[band], 100 * curve.high[band], color=color,
                                        alpha=0.18, linewidth=0)
                    epochs |= {int(e) for e in curve.epochs}
                epoch_ticks(ax, epochs)
                ax.set_xlabel("epoch")
                ax.set_ylabel(f"val {NAMES[metric]} (%)" + (", lower is better" if metric in LOWER_IS_BETTER else ""))
                ax.set_title(f"schedule {panel}")
                ax.grid(True, linewidth=0.4, alpha=0.5)
        shared_legend(fig, axes[0])
        return save_png_pdf(fig, out_dir, "crowd")
