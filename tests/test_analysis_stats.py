"""analysis.stats and analysis.power against hand computations, independent scipy calls, brute-force loops and Monte-Carlo."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.power import detectable_effect, n_for_power, power_analysis, t_test_power
from analysis.stats import (bootstrap_speedup, first_epoch_reaching, holm, mean_curve, paired_difference_curve,
                            paired_t, speedup, summarize, welch, welch_difference_curve)


def test_summary_matches_hand_computation():
    s = summarize([0.30, 0.32, 0.34, 0.36])
    assert s.n == 4 and s.mean == pytest.approx(0.33)
    # sample std: sqrt(((0.03^2 + 0.01^2) * 2) / 3)
    assert s.std == pytest.approx(math.sqrt(0.002 / 3))
    half = 3.182446305284263 * math.sqrt(0.002 / 3) / 2  # t_{0.975, df=3} from tables, / sqrt(n)
    assert s.ci == pytest.approx((0.33 - half, 0.33 + half))
    assert s.ci == pytest.approx(scipy_stats.t.interval(0.95, df=3, loc=0.33, scale=scipy_stats.sem([0.30, 0.32, 0.34, 0.36])))


def test_one_value_has_no_spread():
    s = summarize([0.25])
    assert (s.mean, s.std, s.n, s.ci) == (0.25, None, 1, None)


def test_welch_matches_the_formula_and_scipy():
    a, b = [0.40, 0.42, 0.45], [0.35, 0.36, 0.33, 0.37]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)  # Welch-Satterthwaite
    expected = 2 * scipy_stats.t.sf(abs(t), df)
    c = welch(a, b)
    assert c.delta == pytest.approx(np.mean(a) - np.mean(b))
    assert c.p == pytest.approx(expected, rel=1e-10)
    assert c.p == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_welch_needs_two_values_per_side_and_flags_zero_variance():
    assert welch([0.4], [0.3, 0.35]).p is None
    assert welch([0.4], [0.3, 0.35]).delta == pytest.approx(0.4 - 0.325)
    assert math.isnan(welch([0.0, 0.0], [0.0, 0.0]).p)


def test_mean_curve_of_runs_with_different_lengths():
    c = mean_curve([{1: 0.1, 2: 0.2, 3: 0.3}, {1: 0.3, 2: 0.4}])
    assert c.epochs.tolist() == [1, 2, 3] and c.n.tolist() == [2, 2, 1]
    assert c.mean == pytest.approx([0.2, 0.3, 0.3])
    half = scipy_stats.t.ppf(0.975, 1) * np.std([0.1, 0.3], ddof=1) / math.sqrt(2)
    assert (c.low[0], c.high[0]) == pytest.approx((0.2 - half, 0.2 + half))
    assert math.isnan(c.low[2]) and math.isnan(c.high[2])  # one run at epoch 3: no band


def test_first_epoch_reaching_and_speedup():
    c = mean_curve([{1: 0.1, 2: 0.25, 3: 0.3, 4: 0.31}])
    assert first_epoch_reaching(c, 0.25) == 2  # equal counts as reached
    assert first_epoch_reaching(c, 0.305) == 4
    assert first_epoch_reaching(c, 0.5) is None
    assert speedup(12, 4) == 3.0 and speedup(12, None) is None
    with pytest.raises(ValueError):
        speedup(12, 0)


# --- effects with intervals -------------------------------------------------------------------------------

def test_paired_t_matches_scipy_and_the_t_interval():
    a = np.array([0.41, 0.44, 0.39, 0.47, 0.43])
    b = np.array([0.40, 0.41, 0.40, 0.42, 0.41])
    c = paired_t(a, b)
    d = a - b
    half = scipy_stats.t.ppf(0.975, df=4) * np.std(d, ddof=1) / math.sqrt(5)
    assert c.paired and c.delta == pytest.approx(d.mean())
    assert c.ci == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.ci == pytest.approx(tuple(scipy_stats.ttest_rel(a, b).confidence_interval(0.95)))
    assert c.p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert (c.wins, c.ties, c.losses, c.n_variant) == (4, 0, 1, 5)  # seed 2 loses
    narrower = paired_t(a, b, confidence=0.8)
    assert narrower.ci == pytest.approx(tuple(scipy_stats.ttest_rel(a, b).confidence_interval(0.8)))


def test_paired_t_counts_ties_and_needs_two_pairs():
    c = paired_t([0.5, 0.3, 0.2], [0.4, 0.3, 0.25])
    assert (c.wins, c.ties, c.losses) == (1, 1, 1)
    one = paired_t([0.5], [0.4])
    assert one.p is None and one.ci is None and one.wins == 1 and one.delta == pytest.approx(0.1)
    same = paired_t([0.5, 0.52], [0.4, 0.42])  # both differences 0.1 up to rounding: t would divide by noise
    assert math.isnan(same.p) and same.delta == pytest.approx(0.1)
    with pytest.raises(ValueError):
        paired_t([0.5, 0.4], [0.3])


def test_welch_interval_is_welch_satterthwaite():
    a, b = [0.40, 0.42, 0.45], [0.35, 0.36, 0.33, 0.37]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    c = welch(a, b)
    assert not c.paired and c.wins is None and (c.n_variant, c.n_baseline) == (3, 4)
    assert c.ci == pytest.approx((np.mean(a) - np.mean(b) - half, np.mean(a) - np.mean(b) + half))
    assert c.ci == pytest.approx(tuple(scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)))
    assert welch([0.4], [0.3, 0.35]).ci is None


def _holm_by_procedure(pvalues):
    """Holm's procedure itself: at level alpha, walk the sorted p-values and reject while p_(j) <= alpha /
    (m - j + 1). A hypothesis's adjusted p is the smallest alpha (of all candidate alphas) that rejects it;
    1 if none <= 1 does."""
    tested = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(tested)

    def rejected(alpha):
        out = set()
        for j, i in enumerate(sorted(tested, key=lambda i: pvalues[i]), start=1):
            if (m - j + 1) * pvalues[i] > alpha:  # as the candidates are made: alpha / k can miss p by an ulp
                break
            out.add(i)
        return out

    candidates = sorted({min(1.0, (m - j + 1) * pvalues[i]) for i in tested for j in range(1, m + 1)} | {1.0})
    result = list(pvalues)
    for i in tested:
        result[i] = next((a for a in candidates if i in rejected(a)), 1.0)
    return result


@pytest.mark.parametrize("pvalues", [
    [0.01, 0.04, 0.03, 0.005, 0.2, 0.5],
    [0.02, 0.02, 0.02, 0.9, 1.0, 0.001],  # ties and a p of 1
    [1.0, 1.0, 0.3],
    [0.5704354473234544, 0.47699645294610205, 0.6039264587840699, math.nan, 0.053772960739436076,
     0.9881365031294905],  # (5 p) / 5 != p: a sweep's report once failed on the division
    [0.049],
    [0.01, None, 0.04, math.nan, 0.03, 0.2],  # not computable: not counted in m
])
def test_holm_against_the_step_down_procedure(pvalues):
    got, expected = holm(pvalues), _holm_by_procedure(pvalues)
    for g, e, p in zip(got, expected, pvalues):
        if p is None:
            assert g is None
        elif math.isnan(p):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(e, abs=1e-15) and p <= g <= 1.0


def test_holm_counts_only_computable_p_values():
    adjusted = holm([0.01, None, 0.04, math.nan])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)  # m = 2, not 4
    assert adjusted[1] is None and math.isnan(adjusted[3])


def test_difference_curves():
    pairs = [({1: 0.1, 2: 0.3, 3: 0.4}, {1: 0.1, 2: 0.2, 3: 0.3}), ({1: 0.2, 2: 0.35}, {1: 0.1, 2: 0.3, 3: 0.4})]
    c = paired_difference_curve(pairs)
    assert c.epochs.tolist() == [1, 2, 3] and c.n.tolist() == [2, 2, 1]
    assert c.mean == pytest.approx([0.05, 0.075, 0.1])
    lo, hi = scipy_stats.ttest_1samp([0.0, 0.1], 0.0).confidence_interval(0.95)
    assert (c.low[0], c.high[0]) == pytest.approx((lo, hi))
    assert math.isnan(c.low[2])  # one pair at epoch 3: no band
    w = welch_difference_curve([{1: 0.3, 2: 0.5}, {1: 0.35, 2: 0.45}], [{1: 0.1, 2: 0.2}, {1: 0.2}, {1: 0.15}])
    assert w.mean == pytest.approx([0.325 - 0.15, 0.475 - 0.2])
    ci = scipy_stats.ttest_ind([0.3, 0.35], [0.1, 0.2, 0.15], equal_var=False).confidence_interval(0.95)
    assert (w.low[0], w.high[0]) == pytest.approx(tuple(ci))
    assert math.isnan(w.low[1])  # one baseline run at epoch 2: no Welch band


# --- the speed-up's bootstrap ----------------------------------------------------------------------------

def _speedups_by_loop(variant, baseline, rows_v, rows_b):
    """Per resample, with plain dicts: the mean curves of the drawn runs, the drawn baseline's final mean AP,
    the first epochs reaching it; -inf when the variant never does, skipped when the baseline never does."""
    def first_reaching(curves, target):
        for epoch in sorted(set().union(*curves)):
            values = [c[epoch] for c in curves if epoch in c]
            if sum(values) / len(values) >= target - 1e-9:
                return epoch
        return None

    out = []
    for iv, ib in zip(rows_v, rows_b):
        vs, bs = [variant[i] for i in iv], [baseline[i] for i in ib]
        target = sum(c[max(c)] for c in bs) / len(bs)
        e_b, e_v = first_reaching(bs, target), first_reaching(vs, target)
        if e_b is not None:
            out.append(-math.inf if e_v is None else e_b / e_v)
    return sorted(out)


def _percentile_bounds(ordered, B):
    """95%: the 2.5% and 97.5% order statistics, ceil(B * 25 / 1000) and ceil(B * 975 / 1000) (1-based),
    in integer arithmetic; -inf (never) -> None."""
    low, high = ordered[-(-B * 25 // 1000) - 1], ordered[-(-B * 975 // 1000) - 1]
    return tuple(None if math.isinf(x) else x for x in (low, high))


def _seed_curves(seed, n, *, epochs=30):
    """(variant, baseline) val/AP curves of n seeds: a per-seed offset shared by both sides (what pairing
    cancels), saturating curves (the variant faster) and evaluation noise, so that the epochs reaching a
    target, hence the speed-ups, spread over many values."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, 0.05, size=n)

    def curves(tau):
        return [{e: o + 0.3 * (1 - math.exp(-e / tau)) + 0.01 * rng.standard_normal() for e in range(1, epochs + 1)}
                for o in offsets]
    return curves(6.0), curves(9.0)


@pytest.mark.parametrize("B", [2000, 40])  # 40: the bounds are the 1st and 39th values, rarely tied
def test_paired_bootstrap_equals_a_brute_force_loop(B):
    variant, baseline = _seed_curves(3, 8)
    idx = np.random.default_rng(0).integers(0, 8, size=(B, 8))  # the documented draw: pairs, all at once
    ordered = _speedups_by_loop(variant, baseline, idx, idx)
    got = bootstrap_speedup(variant, baseline, paired=True, resamples=B, seed=0)
    assert (got.low, got.high) == _percentile_bounds(ordered, B)
    assert got.never == sum(math.isinf(x) for x in ordered) and got.undefined == B - len(ordered)
    assert got.low < got.high and len(set(ordered)) > 10  # the example has spread


def test_unpaired_bootstrap_resamples_each_side_on_its_own():
    variant, baseline = _seed_curves(4, 6)
    variant = variant[:5]  # 5 vs 6 runs
    B = 1000
    draw = np.random.default_rng(0)
    rows_v, rows_b = draw.integers(0, 5, size=(B, 5)), draw.integers(0, 6, size=(B, 6))
    ordered = _speedups_by_loop(variant, baseline, rows_v, rows_b)
    got = bootstrap_speedup(variant, baseline, paired=False, resamples=B, seed=0)
    assert (got.low, got.high) == _percentile_bounds(ordered, B) and not got.paired


def test_bootstrap_where_the_variant_mostly_never_reaches_the_target():
    # one strong variant seed; the mean reaches POTO's ~0.30 only in resamples that draw it at least twice
    variant = [{1: 0.40, 2: 0.45, 3: 0.50}] + [{1: 0.10, 2: 0.15, 3: 0.20}] * 3
    baseline = [{1: 0.1, 2: 0.2, 3: 0.30}, {1: 0.1, 2: 0.2, 3: 0.31}, {1: 0.1, 2: 0.2, 3: 0.29},
                {1: 0.1, 2: 0.2, 3: 0.30}]
    B = 2000
    idx = np.random.default_rng(0).integers(0, 4, size=(B, 4))
    ordered = _speedups_by_loop(variant, baseline, idx, idx)
    got = bootstrap_speedup(variant, baseline, paired=True, resamples=B, seed=0)
    never = sum(math.isinf(x) for x in ordered)
    assert got.never == never and got.never_share == pytest.approx(never / B)
    assert 0.6 < got.never_share < 0.85  # P(drawn < 2 times of 4) = 0.74
    assert got.low is None and got.high is not None  # "[never, x]"
    assert (got.low, got.high) == _percentile_bounds(ordered, B)
    hopeless = bootstrap_speedup([{1: 0.1, 2: 0.2}] * 3, [{1: 0.2, 2: 0.3}] * 3, paired=True, resamples=200)
    assert (hopeless.low, hopeless.high, hopeless.never_share) == (None, None, 1.0)


# --- power ---------------------------------------------------------------------------------------------

def _power_reference(effect, sd, n_a, n_b=None, alpha=0.05):
    """Power of the two-sided t-test from the noncentral t written out here: paired df n-1, nc d/sd*sqrt(n);
    two-sample df n_a+n_b-2, nc d/(sd*sqrt(1/n_a+1/n_b))."""
    df = n_a - 1 if n_b is None else n_a + n_b - 2
    nc = effect / sd * math.sqrt(n_a) if n_b is None else effect / (sd * math.sqrt(1 / n_a + 1 / n_b))
    crit = scipy_stats.t.ppf(1 - alpha / 2, df)
    return 1 - scipy_stats.nct.cdf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc)


def _simulated_power(effect, sd, n_a, n_b=None, sims=20000, seed=0):
    """Share of simulated experiments whose t-test rejects at 0.05: paired (baselines with their own spread,
    the variant = baseline + N(effect, sd)) or two independent normal samples."""
    rng = np.random.default_rng(seed)
    if n_b is None:
        baseline = rng.normal(0.3, 0.05, size=(sims, n_a))
        variant = baseline + rng.normal(effect, sd, size=(sims, n_a))
        p = scipy_stats.ttest_rel(variant, baseline, axis=1).pvalue
    else:
        p = scipy_stats.ttest_ind(rng.normal(effect, sd, size=(sims, n_a)), rng.normal(0.0, sd, size=(sims, n_b)),
                                  axis=1).pvalue
    return float((p < 0.05).mean())


@pytest.mark.parametrize("effect, sd, n_a, n_b", [(0.011, 0.012, 5, None), (-0.01, 0.02, 12, None),
                                                  (0.02, 0.015, 4, 6), (0.01, 0.01, 8, 8)])
def test_power_against_monte_carlo(effect, sd, n_a, n_b):
    power = t_test_power(effect, sd, n_a, n_b)
    assert power == pytest.approx(_power_reference(effect, sd, n_a, n_b), abs=1e-9)
    assert abs(_simulated_power(effect, sd, n_a, n_b) - power) < 0.015


@pytest.mark.parametrize("paired", [True, False])
def test_n_for_power_is_the_smallest_n_with_80_percent(paired):
    effect, sd = 0.011, 0.012
    n = n_for_power(effect, sd, paired=paired)
    reference = (lambda k: _power_reference(effect, sd, k)) if paired else \
        (lambda k: _power_reference(effect, sd, k, k))
    assert reference(n) >= 0.8 > reference(n - 1)
    assert _simulated_power(effect, sd, n, None if paired else n) > 0.8 - 0.015
    assert n_for_power(0.0, sd, paired=paired) is None  # no effect: no n


def test_detectable_effect_has_80_percent_power():
    d = detectable_effect(0.012, 5)
    assert _power_reference(d, 0.012, 5) == pytest.approx(0.8, abs=1e-6)
    assert abs(_simulated_power(d, 0.012, 5) - 0.8) < 0.015
    d2 = detectable_effect(0.012, 4, 6)
    assert _power_reference(d2, 0.012, 4, 6) == pytest.approx(0.8, abs=1e-6)


def test_power_analysis_from_data():
    variant, baseline = [0.262, 0.281, 0.259, 0.270, 0.290], [0.250, 0.262, 0.261, 0.255, 0.266]
    pa = power_analysis(variant, baseline, paired=True)
    d = np.subtract(variant, baseline)
    assert pa.paired and pa.n_variant == 5 and pa.sd == pytest.approx(np.std(d, ddof=1))
    smallest = next(k for k in range(2, 10000) if _power_reference(d.mean(), np.std(d, ddof=1), k) >= 0.8)
    assert pa.n_needed == smallest and pa.effect == pytest.approx(d.mean())
    unpaired = power_analysis(variant, baseline[:4], paired=False)
    pooled = math.sqrt((4 * np.var(variant, ddof=1) + 3 * np.var(baseline[:4], ddof=1)) / 7)
    assert unpaired.sd == pytest.approx(pooled) and not unpaired.paired
    smallest = next(k for k in range(2, 10000) if _power_reference(unpaired.effect, pooled, k, k) >= 0.8)
    assert unpaired.n_needed == smallest
    assert power_analysis([0.3], [0.2], paired=True) is None  # one pair
    assert power_analysis([0.5, 0.52], [0.4, 0.42], paired=True) is None  # no spread in the differences
