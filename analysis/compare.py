"""The numbers of the convergence report: per variant, the final COCO metrics over seeds, its effect against
the POTO baseline in the same setting, the mean val/AP curve and the convergence speed-up, plus a
plain-language list of everything that could not be computed.

Effect: when both sides ran the same seeds, runs are paired by seed: per metric the mean paired difference
with its t-interval, the paired t-test and the seeds won; otherwise (labelled unpaired) the difference of
means with Welch's interval and test, and a note naming the seeds that do not pair. Holm's adjustment runs
over the six metrics of one comparison. On AP also a power analysis (seeds needed for 80% power) and the
val/AP difference per epoch (the difference figure).

Speed-up: the target is the baseline's final mean AP. The baseline needs ``E_o2o`` epochs to reach
it (the first epoch its own mean curve gets there: its last epoch, unless it peaked earlier); a
variant needs ``E_v`` (the first epoch its mean curve gets there); speed-up = E_o2o / E_v, with a
percentile bootstrap interval over seed pairs (unpaired: each side resampled on its own).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from analysis import power, stats
from analysis.power import PowerAnalysis
from analysis.runs import FINAL_METRICS, RunQuery, RunRecord
from analysis.variants import (BASELINE_ASSIGNER, PAPER_NAMES, Variant, check_seeds, differing_params,
                               find_baseline, group_variants, labelled_keys)

BOOTSTRAP_SEED = 0  # the bootstrap's fixed RNG seed: the same runs give the same interval


@dataclass
class VariantResult:
    variant: Variant
    final: dict[str, stats.Summary]  # metric -> summary over the runs that logged it
    curve: stats.Curve  # val/AP per epoch
    baseline: Optional[Variant] = None
    paired: Optional[bool] = None  # compared by seed pairs (same seeds on both sides); None: not compared
    versus: dict[str, stats.Comparison] = field(default_factory=dict)  # metric -> vs baseline
    holm: dict[str, Optional[float]] = field(default_factory=dict)  # metric -> Holm-adjusted p of versus
    power: Optional[PowerAnalysis] = None  # on AP
    power_missing: Optional[str] = None  # why there is no power analysis (a variant with a baseline)
    difference: Optional[stats.Curve] = None  # val/AP variant - baseline per epoch (paired: mean over pairs)
    seed_differences: dict[str, dict[int, float]] = field(default_factory=dict)  # paired: seed -> {epoch: d}
    target_ap: Optional[float] = None  # the baseline's final mean AP
    reach_epoch: Optional[int] = None  # first epoch the mean curve reaches target_ap
    baseline_epochs: Optional[int] = None  # the baseline's own first epoch reaching target_ap
    speedup: Optional[float] = None
    speedup_ci: Optional[stats.SpeedupInterval] = None

    @property
    def label(self) -> str:
        return self.variant.label

    @property
    def n(self) -> int:
        return len(self.variant.runs)

    @property
    def seeds(self) -> list[str]:
        return sorted((r.seed for r in self.variant.runs), key=_seed_order)


@dataclass
class Report:
    query: RunQuery
    results: list[VariantResult]
    notes: list[str]  # what could not be computed, and why
    confidence: float = 0.95
    bootstrap: int = 2000  # resamples of the speed-up interval

    @property
    def panels(self) -> list[str]:
        return sorted({r.variant.panel for r in self.results})


def build_report(query: RunQuery, *, confidence: float = 0.95, bootstrap: int = 2000) -> Report:
    """Raises AnalysisError when a variant holds two runs of one seed (see analysis.variants.check_seeds)."""
    variants = group_variants(query.records)
    check_seeds(variants)
    notes = [f"Excluded run {e.run_name or e.run_id} ({e.run_id}): {e.reason}." for e in query.excluded]
    notes += _split_note(query.records, variants)
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
        results.append(result)
    report = Report(query=query, results=results, notes=notes, confidence=confidence, bootstrap=bootstrap)
    by_variant = {id(r.variant): r for r in results}
    for result in results:
        _compare_to_baseline(result, by_variant, variants, report)
    return report


def _split_note(records: Sequence[RunRecord], variants: Sequence[Variant]) -> list[str]:
    """Name the logged params that split runs into variants (those the labels show)."""
    shown = set(labelled_keys([v.groups for v in variants]))
    named = [k for k in differing_params(records) if f"params.{k}" in shown]
    if not named:
        return []
    values = [f"{k} ({', '.join(sorted({r.params.get(k, '') or 'not logged' for r in records}))})" for k in named]
    return [f"The runs differ in the logged params {'; '.join(values)}: runs that differ in them are separate "
            "variants (named in the labels), never seeds of one."]


def _compare_to_baseline(result: VariantResult, by_variant: dict, variants: Sequence[Variant],
                         report: Report) -> None:
    variant, notes = result.variant, report.notes
    baseline = find_baseline(variant, variants)
    if baseline is None:
        notes.append(f"{_where(variant)}: no {PAPER_NAMES[BASELINE_ASSIGNER]} ({BASELINE_ASSIGNER}) runs in the "
                     f"same setting ({_setting(variant)}): no difference, p-value or speed-up.")
        return
    base = by_variant[id(baseline)]
    result.baseline = baseline
    if variant is not baseline:
        _differences(result, base, report)
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
    if variant is not baseline and result.baseline_epochs is not None:
        variant_runs, baseline_runs = sides(result, base)
        if min(len(variant_runs), len(baseline_runs)) >= 2:  # one run (pair) resamples to itself: no interval
            result.speedup_ci = stats.bootstrap_speedup(
                [r.curve for r in variant_runs], [r.curve for r in baseline_runs], paired=bool(result.paired),
                resamples=report.bootstrap, seed=BOOTSTRAP_SEED, confidence=report.confidence)
            if result.speedup_ci.undefined:  # runs of different lengths: some resamples have no target epoch
                notes.append(f"{_where(variant)}: in {result.speedup_ci.undefined} of {report.bootstrap} bootstrap "
                             f"resamples {baseline.label}'s mean curve never reaches its own final mean AP; the "
                             "speed-up's interval is over the others.")


def _differences(result: VariantResult, base: VariantResult, report: Report) -> None:
    """Per metric the effect against the baseline (paired by seed when the seed sets are equal), Holm's
    adjustment over the metrics, the power analysis on AP and the val/AP difference per epoch."""
    variant, baseline, notes = result.variant, base.variant, report.notes
    mine, theirs = set(result.seeds), set(base.seeds)
    result.paired = mine == theirs
    if not result.paired:
        notes.append(f"{_where(variant)}: the seeds differ from {baseline.label}'s ({_seed_list(mine - theirs)} "
                     f"{variant.label} only; {_seed_list(theirs - mine)} {baseline.label} only) and do not pair: "
                     "unpaired comparison (difference of means, Welch's interval and p; the speed-up bootstrap "
                     "resamples each side on its own).")
    variant_runs, baseline_runs = sides(result, base)
    result.versus = compare_metrics(result, base, FINAL_METRICS, lambda run, metric: run.final.get(metric),
                                    confidence=report.confidence)
    adjusted = stats.holm([result.versus[m].p if m in result.versus else None for m in FINAL_METRICS])
    result.holm = {m: p for m, p in zip(FINAL_METRICS, adjusted) if m in result.versus}
    _difference_notes(result, base, notes)
    _power(result, base)
    if result.paired:
        result.difference = stats.paired_difference_curve(
            [(v.curve, b.curve) for v, b in zip(variant_runs, baseline_runs)], confidence=report.confidence)
        result.seed_differences = {v.seed: {e: v.curve[e] - b.curve[e] for e in sorted(v.curve.keys() & b.curve.keys())}
                                   for v, b in zip(variant_runs, baseline_runs)}
    else:
        result.difference = stats.welch_difference_curve([r.curve for r in variant_runs],
                                                         [r.curve for r in baseline_runs], confidence=report.confidence)


def _difference_notes(result: VariantResult, base: VariantResult, notes: list[str]) -> None:
    where, versus = _where(result.variant), result.versus.values()
    if result.paired and result.n < 2:
        notes.append(f"{where}: p-values, intervals, power and the speed-up's bootstrap need >= 2 seed pairs "
                     f"(1 pair with {base.label}): differences only.")
    elif not result.paired and (base.n < 2 or result.n < 2):
        notes.append(f"{where}: p-values need >= 2 runs on both sides ({result.n} vs {base.n} of {base.label}): "
                     "differences only (no interval, power or bootstrap).")
    elif any(c.p is not None and c.p != c.p for c in versus):  # NaN
        notes.append(f"{where}: " + ("every seed pair differs by the same amount on some metric: the paired "
                                     "t-test is undefined (nan) there." if result.paired else
                                     "both sides have zero variance on some metric: Welch's p is undefined "
                                     "(nan) there."))
    untested = [m for m in FINAL_METRICS if result.holm.get(m) is None or result.holm[m] != result.holm[m]]
    tested = len(FINAL_METRICS) - len(untested)
    if untested and tested:
        notes.append(f"{where}: Holm's adjustment is over the {tested} metrics with a p-value; "
                     f"{', '.join(untested)} had none and are left out of it.")


def _power(result: VariantResult, base: VariantResult) -> None:
    """Seeds needed for 80% power on AP, from the observed difference and spread."""
    variant_runs, baseline_runs = sides(result, base)
    if result.paired:  # the pairs where both runs have AP
        pairs = [(v.final["AP"], b.final["AP"]) for v, b in zip(variant_runs, baseline_runs)
                 if "AP" in v.final and "AP" in b.final]
        a, b = [x for x, _ in pairs], [y for _, y in pairs]
    else:
        a = [r.final["AP"] for r in variant_runs if "AP" in r.final]
        b = [r.final["AP"] for r in baseline_runs if "AP" in r.final]
    result.power = power.power_analysis(a, b, paired=bool(result.paired))
    if result.power is None:
        if len(a) < 2 or len(b) < 2:
            result.power_missing = "needs >= 2 seed pairs" if result.paired else "needs >= 2 runs on each side"
        else:
            result.power_missing = "no spread in the AP values: a t-test's power is undefined"


def compare_metrics(result: VariantResult, base: VariantResult, metrics: Sequence[str],
                    value: Callable[[RunRecord, str], Optional[float]], *,
                    confidence: float) -> dict[str, stats.Comparison]:
    """Per metric the variant against its baseline: paired t on the seed pairs where both runs have a value
    (``value(run, metric)``, None: not logged), else Welch on each side's values; metrics without values left out."""
    variant_runs, baseline_runs = sides(result, base)
    versus = {}
    for metric in metrics:
        if result.paired:
            values = ((value(v, metric), value(w, metric)) for v, w in zip(variant_runs, baseline_runs))
            pairs = [(a, b) for a, b in values if a is not None and b is not None]
            if pairs:
                versus[metric] = stats.paired_t(*zip(*pairs), confidence=confidence)
        else:
            a = [x for x in (value(r, metric) for r in variant_runs) if x is not None]
            b = [x for x in (value(r, metric) for r in baseline_runs) if x is not None]
            if a and b:
                versus[metric] = stats.welch(a, b, confidence=confidence)
    return versus


def sides(result: VariantResult, base: VariantResult) -> tuple[list[RunRecord], list[RunRecord]]:
    """Paired: the variant's and the baseline's runs in the same seed order; unpaired: each side's runs."""
    if result.paired:
        pairs = _by_seed_pairs(result.variant.runs, base.variant.runs)
        return [v for v, _ in pairs], [b for _, b in pairs]
    return list(result.variant.runs), list(base.variant.runs)


def _by_seed_pairs(variant: Sequence[RunRecord], baseline: Sequence[RunRecord]) -> list[tuple[RunRecord, RunRecord]]:
    theirs = {r.seed: r for r in baseline}  # one run per seed: analysis.variants.check_seeds
    return [(v, theirs[v.seed]) for v in sorted(variant, key=lambda r: _seed_order(r.seed)) if v.seed in theirs]


def _seed_order(seed: str) -> tuple[int, str]:
    return len(seed), seed  # numeric order for non-negative integers: "2" before "10"


def _seed_list(seeds: set[str]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(sorted(seeds, key=_seed_order)) if seeds \
        else "no seed"


def _where(variant: Variant) -> str:
    return f"{variant.label} [schedule {variant.panel}]"


def _setting(variant: Variant) -> str:
    return ", ".join(f"{k.replace('params.', '')}={v}" for k, v in variant.context)
