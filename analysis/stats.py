"""Statistics over seeds, as pure functions on numbers. Nothing here knows about MLflow or plots.

- :func:`summarize` / :func:`mean_curve`: mean, sample std and Student-t interval (per epoch for curves).
- :func:`paired_t` (runs paired by seed) and :func:`welch` (unpaired): the difference variant - baseline
  with its t-interval and two-sided p-value; paired also counts the seeds the variant wins.
- :func:`holm`: Holm's step-down adjustment of the p-values of one comparison's metrics.
- :func:`first_epoch_reaching`, :func:`speedup` and :func:`bootstrap_speedup`: the convergence speed-up and
  its percentile bootstrap interval over seed pairs.
- Power (how many seeds a t-test needs for 80% power, what the current seeds detect): analysis/power.py.

"Not computable" is an explicit None (never a made-up number): one seed has no std, no interval and
no p-value. A test that is undefined (zero variance on both sides) gives a NaN p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats

REACH_TOLERANCE = 1e-9  # a mean curve "reaches" a target it equals up to float summation order


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
    _check_confidence(confidence)
    mean = float(x.mean())
    if x.size < 2:
        return Summary(mean=mean, std=None, n=1, ci=None)
    std = float(x.std(ddof=1))
    half = _t_quantile(confidence, x.size - 1) * std / math.sqrt(x.size)
    return Summary(mean=mean, std=std, n=int(x.size), ci=(mean - half, mean + half))


@dataclass(frozen=True)
class Comparison:
    """Variant - baseline on one metric.

    Paired (by seed): ``delta`` is the mean of the per-seed differences, ``ci`` the t-interval of that mean
    (df = n - 1), ``p`` the paired t-test, ``sd`` the differences' sample std, and ``wins`` / ``ties`` count
    the seeds where the variant is above / equal. Unpaired: ``delta`` is the difference of means, ``ci``
    the Welch-Satterthwaite interval, ``p`` Welch's test; no sd, wins or ties.
    ``p`` and ``ci`` are None when a side has fewer than 2 values; ``p`` is NaN when the test is undefined
    (every paired difference equal; zero variance on both unpaired sides, which also has no interval).
    """

    delta: float
    p: Optional[float]
    ci: Optional[tuple[float, float]] = None
    paired: bool = False
    n_variant: int = 0  # runs of the variant (paired: the pairs)
    n_baseline: int = 0  # runs of the baseline (paired: the pairs)
    sd: Optional[float] = None
    wins: Optional[int] = None
    ties: Optional[int] = None

    @property
    def losses(self) -> Optional[int]:
        return None if self.wins is None else self.n_variant - self.wins - self.ties


def paired_t(variant: Sequence[float], baseline: Sequence[float], *, confidence: float = 0.95) -> Comparison:
    """Mean paired difference (``variant[i] - baseline[i]``: seed i on both sides), its t-interval,
    ``scipy.stats.ttest_rel`` and the sign count."""
    a, b = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_t needs two equally long, non-empty sequences, got {a.shape} and {b.shape}")
    _check_confidence(confidence)
    d = a - b  # [n] per-seed differences
    common = dict(delta=float(d.mean()), paired=True, n_variant=d.size, n_baseline=d.size,
                  wins=int((d > 0).sum()), ties=int((d == 0).sum()))
    if d.size < 2:
        return Comparison(p=None, **common)
    sd = float(d.std(ddof=1))
    half = _t_quantile(confidence, d.size - 1) * sd / math.sqrt(d.size)
    # all differences equal: t = mean / 0 is undefined (scipy would return nan or noise, with a precision warning)
    p = math.nan if no_spread(d) else float(scipy_stats.ttest_rel(a, b).pvalue)
    return Comparison(p=p, ci=(common["delta"] - half, common["delta"] + half), sd=sd, **common)


def welch(variant: Sequence[float], baseline: Sequence[float], *, confidence: float = 0.95) -> Comparison:
    """Difference of means, Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) and the
    Welch-Satterthwaite t-interval of the difference."""
    a, b = np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("welch needs at least one value on each side")
    _check_confidence(confidence)
    common = dict(delta=float(a.mean() - b.mean()), paired=False, n_variant=a.size, n_baseline=b.size)
    if a.size < 2 or b.size < 2:
        return Comparison(p=None, **common)
    if no_spread(a) and no_spread(b):  # t = d / 0 and df = 0 / 0: undefined
        return Comparison(p=math.nan, **common)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size  # squared standard errors of the two means
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))  # Welch-Satterthwaite
    half = _t_quantile(confidence, df) * math.sqrt(va + vb)
    return Comparison(p=float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue),
                      ci=(common["delta"] - half, common["delta"] + half), **common)


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values, in the input order: with p_(1) <= ... <= p_(m),
    adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)). None and NaN p-values are not hypotheses
    tested (m counts only the others) and come back unchanged."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p))
    out = list(pvalues)
    m, running = len(tested), 0.0
    for j, (p, i) in enumerate(tested, start=1):
        running = max(running, min(1.0, (m - j + 1) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class Curve:
    """A per-epoch curve; arrays of length E (epochs where at least one run evaluated).

    ``low``/``high`` are NaN where fewer than two runs (pairs) have a value at that epoch.
    """

    epochs: np.ndarray  # [E] int
    mean: np.ndarray  # [E]
    low: np.ndarray  # [E]
    high: np.ndarray  # [E]
    n: np.ndarray  # [E] int, runs (pairs; unpaired differences: the smaller side) with a value at that epoch


def mean_curve(curves: Sequence[Mapping[int, float]], *, confidence: float = 0.95) -> Curve:
    """Per-epoch mean and t-interval of several runs' {epoch: value} curves."""
    if not curves:
        raise ValueError("mean_curve needs at least one curve")
    epochs = sorted(set().union(*(c.keys() for c in curves)))
    rows = [summarize([c[e] for c in curves if e in c], confidence=confidence) for e in epochs]
    return _curve(epochs, [(r.mean, r.ci, r.n) for r in rows])


def paired_difference_curve(pairs: Sequence[tuple[Mapping[int, float], Mapping[int, float]]], *,
                            confidence: float = 0.95) -> Curve:
    """Per epoch, the mean of (variant - baseline) over the pairs where both runs have that epoch, with its
    t-interval (none with fewer than two pairs)."""
    epochs = sorted({e for v, b in pairs for e in v.keys() & b.keys()})
    rows = [summarize([v[e] - b[e] for v, b in pairs if e in v and e in b], confidence=confidence) for e in epochs]
    return _curve(epochs, [(r.mean, r.ci, r.n) for r in rows])


def welch_difference_curve(variant: Sequence[Mapping[int, float]], baseline: Sequence[Mapping[int, float]], *,
                           confidence: float = 0.95) -> Curve:
    """Per epoch where both sides have values, the difference of means with its Welch interval."""
    epochs = sorted(set().union(*(c.keys() for c in variant)) & set().union(*(c.keys() for c in baseline)))
    rows = []
    for e in epochs:
        c = welch([v[e] for v in variant if e in v], [b[e] for b in baseline if e in b], confidence=confidence)
        rows.append((c.delta, c.ci, min(c.n_variant, c.n_baseline)))
    return _curve(epochs, rows)


def _curve(epochs: Sequence[int], rows: Sequence[tuple[float, Optional[tuple[float, float]], int]]) -> Curve:
    return Curve(epochs=np.array(epochs, dtype=int), mean=np.array([m for m, _, _ in rows], dtype=float),
                 low=np.array([ci[0] if ci else np.nan for _, ci, _ in rows], dtype=float),
                 high=np.array([ci[1] if ci else np.nan for _, ci, _ in rows], dtype=float),
                 n=np.array([n for _, _, n in rows], dtype=int))


def first_epoch_reaching(curve: Curve, target: float, *, tolerance: float = REACH_TOLERANCE) -> Optional[int]:
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


@dataclass(frozen=True)
class SpeedupInterval:
    """Percentile bootstrap interval of the speed-up over ``resamples`` resamples of the runs.

    A bound of None means "never": it falls among the resamples in which the variant's mean curve never
    reaches the target; they rank below every finite speed-up (theirs is below baseline epochs / the
    variant's last epoch). ``undefined`` resamples (the baseline's mean curve never reaches its own final
    mean: runs of different lengths) have no speed-up and are left out of the interval and the shares.
    """

    low: Optional[float]
    high: Optional[float]
    resamples: int
    never: int  # resamples where the variant's mean curve never reaches the target
    undefined: int
    paired: bool
    confidence: float

    @property
    def never_share(self) -> Optional[float]:
        used = self.resamples - self.undefined
        return self.never / used if used else None


def bootstrap_speedup(variant: Sequence[Mapping[int, float]], baseline: Sequence[Mapping[int, float]], *,
                      paired: bool, resamples: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> SpeedupInterval:
    """Percentile bootstrap interval of the speed-up (see :func:`speedup`) from the runs' val/AP curves.

    Draws, from ``numpy.random.default_rng(seed)``: paired (``variant[i]`` and ``baseline[i]`` are seed i's
    runs): ``idx = rng.integers(0, n, size=(resamples, n))`` picks the pairs of every resample at once;
    unpaired: ``rng.integers(0, n_v, size=(resamples, n_v))`` for the variant, then the same for the baseline.
    Per resample: the mean curves of the drawn runs (per epoch, of those that evaluated it), target = the
    mean of the drawn baseline runs' last values, E_b / E_v = the first epoch each mean curve reaches it,
    speed-up = E_b / E_v (-inf when the variant never does). Bounds: the order statistics k = ceil(q * B')
    (1-based) of the B' defined speed-ups, q = (1 -/+ confidence) / 2; no interpolation, so that a bound
    can be "never".
    """
    if not variant or not baseline:
        raise ValueError("bootstrap_speedup needs runs on both sides")
    if paired and len(variant) != len(baseline):
        raise ValueError(f"paired bootstrap needs as many variant runs as baseline runs ({len(variant)} vs "
                         f"{len(baseline)})")
    if resamples < 1:
        raise ValueError(f"resamples={resamples}: expected >= 1")
    _check_confidence(confidence)
    rng = np.random.default_rng(seed)
    grid = np.array(sorted(set().union(*(c.keys() for c in [*variant, *baseline]))), dtype=int)  # [E]
    if paired:
        idx_v = idx_b = rng.integers(0, len(variant), size=(resamples, len(variant)))  # [B, n]
    else:
        idx_v = rng.integers(0, len(variant), size=(resamples, len(variant)))  # [B, n_v]
        idx_b = rng.integers(0, len(baseline), size=(resamples, len(baseline)))  # [B, n_b]
    last_b = np.array([c[max(c)] for c in baseline], dtype=float)  # [n_b] each baseline run's final AP
    target = last_b[idx_b].mean(axis=1)  # [B]
    e_b = _first_reach(_resampled_mean(_matrix(baseline, grid), idx_b), target, grid)  # [B], 0 = never
    e_v = _first_reach(_resampled_mean(_matrix(variant, grid), idx_v), target, grid)  # [B], 0 = never
    defined = e_b > 0
    speed = np.where(e_v > 0, e_b / np.maximum(e_v, 1), -np.inf)[defined]  # [B']
    low = high = None
    if speed.size:
        ordered = np.sort(speed)
        low, high = (_order_statistic(ordered, q) for q in ((1 - confidence) / 2, (1 + confidence) / 2))
    return SpeedupInterval(low=low, high=high, resamples=resamples, never=int((e_v[defined] == 0).sum()),
                           undefined=int((~defined).sum()), paired=paired, confidence=confidence)


def _matrix(curves: Sequence[Mapping[int, float]], grid: np.ndarray) -> np.ndarray:
    """[n, E] values on the epoch grid, NaN where a run did not evaluate."""
    return np.array([[c.get(int(e), np.nan) for e in grid] for c in curves], dtype=float)


def _resampled_mean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values [n, E], idx [B, k] -> [B, E]: per resample and epoch, the mean of the drawn runs that have a
    value there (NaN when none has)."""
    drawn = values[idx]  # [B, k, E]
    count = (~np.isnan(drawn)).sum(axis=1)  # [B, E]
    total = np.nansum(drawn, axis=1)  # [B, E]
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _first_reach(mean: np.ndarray, target: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """mean [B, E], target [B] -> [B] first epoch of the grid with mean >= target (0: never)."""
    hits = mean >= target[:, None] - REACH_TOLERANCE  # NaN compares False
    return np.where(hits.any(axis=1), grid[hits.argmax(axis=1)], 0)


def _order_statistic(ordered: np.ndarray, q: float) -> Optional[float]:
    k = max(1, math.ceil(q * ordered.size - 1e-9))  # 1-based; the guard keeps 0.025 * 2000 at 50, not 51
    value = float(ordered[min(k, ordered.size) - 1])
    return None if math.isinf(value) else value


def no_spread(values: np.ndarray) -> bool:
    """All values equal up to float rounding (0.5 - 0.4 and 0.52 - 0.42 differ in the 17th digit): a t statistic
    would divide by rounding noise."""
    return bool(np.ptp(values) <= 1e-12 * np.abs(values).max())


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: expected a number in (0, 1)")


def _t_quantile(confidence: float, df: float) -> float:
    """The two-sided Student-t critical value: t_{(1 + confidence) / 2, df}."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, df))
