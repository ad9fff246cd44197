"""The numbers of the convergence report: per variant, the final COCO metrics over seeds, the
difference to its POTO baseline (Welch), the mean val/AP curve and the convergence speed-up, plus a
plain-language list of everything that could not be computed.

Speed-up: the target is the baseline's final mean AP. The baseline needs ``E_o2o`` epochs to reach
it (the first epoch its own mean curve gets there: its last epoch, unless it peaked earlier); a
variant needs ``E_v`` (the first epoch its mean curve gets there); speed-up = E_o2o / E_v.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from analysis import stats
from analysis.runs import FINAL_METRICS, RunQuery
from analysis.variants import PAPER_NAMES, BASELINE_ASSIGNER, Variant, duplicate_seeds, find_baseline, group_variants


@dataclass
class VariantResult:
    variant: Variant
    final: dict[str, stats.Summary]  # metric -> summary over the runs that logged it
    curve: stats.Curve  # val/AP per epoch
    baseline: Optional[Variant] = None
    versus: dict[str, stats.Comparison] = field(default_factory=dict)  # metric -> vs baseline
    target_ap: Optional[float] = None  # the baseline's final mean AP
    reach_epoch: Optional[int] = None  # first epoch the mean curve reaches target_ap
    baseline_epochs: Optional[int] = None  # the baseline's own first epoch reaching target_ap
    speedup: Optional[float] = None

    @property
    def label(self) -> str:
        return self.variant.label

    @property
    def n(self) -> int:
        return len(self.variant.runs)

    @property
    def seeds(self) -> list[str]:
        return sorted((r.seed for r in self.variant.runs), key=lambda s: (len(s), s))


@dataclass
class Report:
    query: RunQuery
    results: list[VariantResult]
    notes: list[str]  # what could not be computed, and why

    @property
    def panels(self) -> list[str]:
        return sorted({r.variant.panel for r in self.results})


def build_report(query: RunQuery, *, confidence: float = 0.95) -> Report:
    variants = group_variants(query.records)
    notes = [f"Excluded run {e.run_name or e.run_id} ({e.run_id}): {e.reason}." for e in query.excluded]
    results = []
    for variant in variants:
        final = {}
        for metric in FINAL_METRICS:
            values = [r.final[metric] for r in variant.runs if metric in r.final]
            if values:
                final[metric] = stats.summarize(values, confidence=confidence)
            lacking = [f"{r.run_name or r.run_id} ({r.missing.get(metric, 'not logged')})" for r in variant.runs
                       if metric not in r.final]
            if lacking:
                notes.append(f"{_where(variant)}: no usable val/{metric} in {', '.join(lacking)}; its {metric} "
                             "uses the other runs only" + (" (none: not computed)." if not values else "."))
        result = VariantResult(variant=variant, final=final,
                               curve=stats.mean_curve([r.curve for r in variant.runs], confidence=confidence))
        if result.n < 2:
            notes.append(f"{_where(variant)}: one run (seed {result.seeds[0]}): no std, confidence band or "
                         "p-value.")
        if dup := duplicate_seeds(variant):
            notes.append(f"{_where(variant)}: several runs with seed {', '.join(dup)}; each counts in n.")
        results.append(result)
    by_variant = {id(r.variant): r for r in results}
    for result in results:
        _compare_to_baseline(result, by_variant, variants, notes)
    return Report(query=query, results=results, notes=notes)


def _compare_to_baseline(result: VariantResult, by_variant: dict, variants: Sequence[Variant],
                         notes: list[str]) -> None:
    variant = result.variant
    baseline = find_baseline(variant, variants)
    if baseline is None:
        notes.append(f"{_where(variant)}: no {PAPER_NAMES[BASELINE_ASSIGNER]} ({BASELINE_ASSIGNER}) runs in the "
                     f"same setting ({_setting(variant)}): no difference, p-value or speed-up.")
        return
    base = by_variant[id(baseline)]
    result.baseline = baseline
    for metric, summary in result.final.items():
        if metric in base.final:
            values = [r.final[metric] for r in variant.runs if metric in r.final]
            base_values = [r.final[metric] for r in baseline.runs if metric in r.final]
            result.versus[metric] = stats.welch(values, base_values)
    if variant is not baseline:
        if base.n < 2 or result.n < 2:
            notes.append(f"{_where(variant)}: p-values need >= 2 runs on both sides ({result.n} vs "
                         f"{base.n} of {baseline.label}): differences only.")
        elif any(c.p is not None and c.p != c.p for c in result.versus.values()):  # NaN
            notes.append(f"{_where(variant)}: both sides have zero variance on some metric: Welch's p is "
                         "undefined (nan) there.")
    if "AP" not in base.final:
        return
    result.target_ap = base.final["AP"].mean
    result.baseline_epochs = stats.first_epoch_reaching(base.curve, result.target_ap)
    result.reach_epoch = stats.first_epoch_reaching(result.curve, result.target_ap)
    if result.reach_epoch is None:
        notes.append(f"{_where(variant)}: its mean val/AP never reaches {baseline.label}'s final mean AP "
                     f"{100 * result.target_ap:.2f} within its {int(result.curve.epochs.max())} epochs: no speed-up.")
    elif result.baseline_epochs is None:  # its runs differ in length: the last epoch's mean is of fewer runs
        notes.append(f"{_where(variant)}: {baseline.label}'s mean curve never reaches its own final mean AP (its "
                     "runs have different lengths): no speed-up.")
    else:
        result.speedup = stats.speedup(result.baseline_epochs, result.reach_epoch)


def _where(variant: Variant) -> str:
    return f"{variant.label} [schedule {variant.panel}]"


def _setting(variant: Variant) -> str:
    return ", ".join(f"{k.replace('params.', '')}={v}" for k, v in variant.context)
