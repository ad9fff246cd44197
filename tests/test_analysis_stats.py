"""analysis.stats against hand computations and independent scipy calls."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.stats import first_epoch_reaching, mean_curve, speedup, summarize, welch


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
