"""Statistics over seeds, as pure functions on numbers: mean / std / t confidence interval, Welch's
t-test, mean curves, and the convergence speed-up. Nothing here knows about MLflow or plots.

"Not computable" is an explicit None (never a made-up number): one seed has no std, no interval and
no p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Summary:
    """Mean over seeds; ``std`` (ddof=1) and the t-interval ``ci`` (low, high) are None for n < 2."""

    mean: float
    std: Optional[float]
    n: int
    ci: Optional[tuple[float, float]]


def summarize(values: Sequence[float], *, confidence: float = 0.95) -> Summary:
    """Mean, sample std and the two-sided Student-t confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: expected a number in (0, 1)")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(mean=mean, std=None, n=1, ci=None)
    std = float(x.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return Summary(mean=mean, std=std, n=int(x.size), ci=(mean - half, mean + half))


@dataclass(frozen=True)
class Comparison:
    """``delta`` = mean(variant) - mean(baseline); ``p`` is Welch's two-sided p-value, None when either
    side has fewer than 2 values, NaN when both sides have zero variance (the test is undefined)."""

    delta: float
    p: Optional[float]


def welch(variant: Sequence[float], baseline: Sequence[float]) -> Comparison:
    """Difference of means and Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``)."""
    a, b = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("welch needs at least one value on each side")
    delta = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Comparison(delta=delta, p=None)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # t = d / 0: undefined (scipy would also warn about precision)
        return Comparison(delta=delta, p=math.nan)
    return Comparison(delta=delta, p=float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue))


@dataclass(frozen=True)
class Curve:
    """Mean curve over seeds; arrays of length E (epochs where at least one run evaluated).

    ``low``/``high`` are NaN where fewer than two runs have a value at that epoch.
    """

    epochs: np.ndarray  # [E] int
    mean: np.ndarray  # [E]
    low: np.ndarray  # [E]
    high: np.ndarray  # [E]
    n: np.ndarray  # [E] int, runs with a value at that epoch


def mean_curve(curves: Sequence[Mapping[int, float]], *, confidence: float = 0.95) -> Curve:
    """Per-epoch mean and t-interval of several runs' {epoch: value} curves."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    epochs = sorted(set().union(*(c.keys() for c in curves)))
    rows = [summarize([c[e] for c in curves if e in c], confidence=confidence) for e in epochs]
    return Curve(epochs=np.array(epochs, dtype=int), mean=np.array([r.mean for r in rows]),
                 low=np.array([r.ci[0] if r.ci else np.nan for r in rows]),
                 high=np.array([r.ci[1] if r.ci else np.nan for r in rows]),
                 n=np.array([r.n for r in rows], dtype=int))


def first_epoch_reaching(curve: Curve, target: float, *, tolerance: float = 1e-9) -> Optional[int]:
    """The first epoch whose mean is >= ``target`` (minus a float tolerance), None if it never is."""
    hits = np.nonzero(curve.mean >= target - tolerance)[0]
    return int(curve.epochs[hits[0]]) if hits.size else None


def speedup(baseline_epochs: int, variant_epochs: Optional[int]) -> Optional[float]:
    """How many times fewer epochs the variant needs to reach the baseline's final AP (None: never)."""
    if variant_epochs is None:
        return None
    if baseline_epochs <= 0 or variant_epochs <= 0:
        raise ValueError(f"epochs must be positive, got baseline {baseline_epochs}, variant {variant_epochs}")
    return baseline_epochs / variant_epochs
