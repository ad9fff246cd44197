"""Variants, baselines, paired effects, speed-up, power and the 'could not compute' notes, on hand-made run
records; every number checked against scipy or a computation written out here."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.compare import build_report
from analysis.runs import AnalysisError, RunQuery, RunRecord
from analysis.tables import to_json, to_latex, to_markdown
from test_analysis_stats import _holm_by_procedure, _speedups_by_loop

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def record(assigner, seed, curve, *, schedule="1x", use_3dmf="False", missing=None, final=None, params=None,
           run_id=None, sweep_id=""):
    """A run whose final metrics are its last val/AP (or ``final``'s values), logging ``params``."""
    missing = missing or {}
    final = {m: (final or {}).get(m, curve[max(curve)]) for m in METRICS if m not in missing}
    groups = {"assigner": assigner, "schedule": schedule, "backbone": "resnet18", "branch_weighting": "equal",
              "dataset": "synthetic", "params.model.use_3dmf": use_3dmf}
    return RunRecord(run_id=run_id or f"{assigner}-{seed}-{schedule}", run_name=f"{assigner}_{seed}",
                     seed=str(seed), groups=groups, curve=curve, final=final, missing=missing,
                     params=dict(params or {}), sweep_id=sweep_id)


def report_of(records, **kwargs):
    return build_report(RunQuery(uri="sqlite:///x.db", experiment="date", records=records), **kwargs)


def test_speedup_and_differences():
    records = [record("o2o", 0, {1: 0.10, 2: 0.20, 3: 0.30, 4: 0.40}),
               record("o2o", 1, {1: 0.12, 2: 0.22, 3: 0.32, 4: 0.42}),
               record("dual", 0, {1: 0.30, 2: 0.41, 3: 0.45, 4: 0.50}),
               record("dual", 1, {1: 0.30, 2: 0.43, 3: 0.47, 4: 0.53})]
    report = report_of(records)
    o2o, dual = report.results  # POTO before DATE
    assert (o2o.label, dual.label) == ("POTO", "DATE")
    assert o2o.target_ap == pytest.approx(0.41)
    assert (o2o.baseline_epochs, o2o.reach_epoch, o2o.speedup) == (4, 4, 1.0)
    assert dual.reach_epoch == 2 and dual.speedup == 2.0  # mean 0.42 at epoch 2 >= 0.41
    assert dual.paired and dual.versus["AP"].delta == pytest.approx(0.105)
    assert dual.versus["AP"].p == pytest.approx(scipy_stats.ttest_rel([0.50, 0.53], [0.40, 0.42]).pvalue)
    # every resample of the two pairs ({0,0}, {1,1}, {0,1}) reaches its POTO target at 2 of 4 epochs
    assert (dual.speedup_ci.low, dual.speedup_ci.high, dual.speedup_ci.never) == (2.0, 2.0, 0)
    assert report.notes == []
    md = to_markdown(report)
    assert "| DATE | 51.50 ± 2.12 | 41.00 | 4 | 2 | 2.00× | [2.00×, 2.00×] | 0.0% |" in md
    assert "Nothing: every number above was computed." in md
    assert r"DATE & 51.50 $\pm$ 2.12 & 41.00 & 4 & 2 & 2.00$\times$ & [2.00$\times$, 2.00$\times$] & 0.0\% \\" \
        in to_latex(report)


def _five_seeds(*, dual_seeds=range(5)):
    """POTO and DATE on 5 seeds with metric-specific finals (a seed effect shared by both, DATE ~ +1 AP)."""
    rng = np.random.default_rng(11)
    seed_effect = rng.normal(0.0, 0.02, size=10)
    records, finals = [], {"o2o": {}, "dual": {}}
    for assigner, gain, seeds in (("o2o", 0.0, range(5)), ("dual", 0.01, dual_seeds)):
        for s in seeds:
            final = {m: 0.3 + 0.05 * i + seed_effect[s] + gain + 0.008 * rng.standard_normal()
                     for i, m in enumerate(METRICS)}
            curve = {e: final["AP"] * e / 6 + 0.004 * rng.standard_normal() for e in range(1, 6)}
            curve[6] = final["AP"]
            finals[assigner][s] = final
            records.append(record(assigner, s, curve, final=final))
    return records, finals


def test_the_paired_table_is_scipy_s_paired_test_with_holm():
    records, finals = _five_seeds()
    report = report_of(records)
    dual = next(r for r in report.results if r.label == "DATE")
    assert dual.paired
    md = to_markdown(report)
    pvalues = [scipy_stats.ttest_rel([finals["dual"][s][m] for s in range(5)],
                                     [finals["o2o"][s][m] for s in range(5)]).pvalue for m in METRICS]
    holm = _holm_by_procedure(pvalues)
    for i, m in enumerate(METRICS):
        a = np.array([finals["dual"][s][m] for s in range(5)])
        b = np.array([finals["o2o"][s][m] for s in range(5)])
        d = a - b
        half = scipy_stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
        cell = f"{100 * d.mean():+.2f} [{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}]"
        p = f"{pvalues[i]:.3f}" if pvalues[i] >= 0.001 else "<0.001"
        hp = f"{holm[i]:.3f}" if holm[i] >= 0.001 else "<0.001"
        head = "| DATE | POTO |" if i == 0 else "| | |"
        assert f"{head} {m} | {cell} | {p} | {hp} | {(d > 0).sum()}/5 |" in md, m
        assert dual.holm[m] == pytest.approx(holm[i])
    d_ap = np.array([finals["dual"][s]["AP"] - finals["o2o"][s]["AP"] for s in range(5)])
    saved = next(v for v in to_json(report)["variants"] if v["label"] == "DATE")["versus_baseline"]["AP"]
    assert saved["paired"] and saved["p_holm"] == pytest.approx(holm[0]) and saved["wins"] == (d_ap > 0).sum()
    sd = d_ap.std(ddof=1)
    needed = next(n for n in range(2, 10 ** 5) if _power(d_ap.mean(), sd, n) >= 0.8)
    assert dual.power.n_needed == needed
    line = (f"- DATE vs POTO: n = 5 pairs, sd of the difference {100 * sd:.2f} AP: 80% power needs {needed} pairs "
            f"for the observed {100 * d_ap.mean():+.2f}; 5 pairs detect |Δ| >= ")
    assert line in md


def _power(effect, sd, n):
    """Two-sided paired t-test power from the noncentral t (df n - 1, nc effect / sd * sqrt(n))."""
    crit = scipy_stats.t.ppf(0.975, n - 1)
    nc = effect / sd * math.sqrt(n)
    return scipy_stats.nct.sf(crit, n - 1, nc) + scipy_stats.nct.cdf(-crit, n - 1, nc)


def test_differing_seeds_are_compared_unpaired_and_say_so_everywhere():
    records, finals = _five_seeds(dual_seeds=(0, 1, 2, 5, 6))
    report = report_of(records)
    dual = next(r for r in report.results if r.label == "DATE")
    assert dual.paired is False and dual.seed_differences == {}
    a = [finals["dual"][s]["AP"] for s in (0, 1, 2, 5, 6)]
    b = [finals["o2o"][s]["AP"] for s in range(5)]
    welch = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert dual.versus["AP"].p == pytest.approx(welch.pvalue)
    assert dual.versus["AP"].ci == pytest.approx(tuple(welch.confidence_interval(0.95)))
    assert dual.versus["AP"].wins is None
    md, tex = to_markdown(report), to_latex(report)
    assert "| DATE (unpaired) | POTO | AP |" in md and "DATE (unpaired) & AP &" in tex
    assert "] unpaired |" in md.split("### Convergence speed")[1]  # the speed-up's interval
    assert "- DATE vs POTO: n = 5 vs 5 runs, unpaired, pooled sd" in md
    assert "DATE [schedule 1x]: the seeds differ from POTO's (seeds 5, 6 DATE only; seeds 3, 4 POTO only) and " \
           "do not pair: unpaired comparison" in "\n".join(report.notes)
    assert not dual.speedup_ci.paired


def test_difference_curve_of_the_pairs():
    records = [record("o2o", s, {1: 0.1 + s / 100, 2: 0.2, 3: 0.3 - s / 100}) for s in (0, 1, 2)]
    records += [record("dual", s, {1: 0.15, 2: 0.2 + s / 50, 3: 0.3}) for s in (0, 1, 2)]
    records += [record("dual", 3, {1: 0.15, 2: 0.25}, schedule="3x"), record("o2o", 3, {1: 0.1}, schedule="3x")]
    report = report_of(records)
    dual = next(r for r in report.results if r.label == "DATE" and r.variant.panel == "1x")
    diffs = {s: {1: 0.15 - (0.1 + s / 100), 2: s / 50, 3: s / 100} for s in (0, 1, 2)}
    assert dual.seed_differences.keys() == {"0", "1", "2"}
    for s in (0, 1, 2):
        assert dual.seed_differences[str(s)] == pytest.approx(diffs[s])
    for i, e in enumerate((1, 2, 3)):
        values = [diffs[s][e] for s in (0, 1, 2)]
        lo, hi = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
        assert (dual.difference.mean[i], dual.difference.low[i], dual.difference.high[i]) == \
            pytest.approx((np.mean(values), lo, hi))
    one_pair = next(r for r in report.results if r.label == "DATE" and r.variant.panel == "3x")
    assert one_pair.difference.epochs.tolist() == [1] and math.isnan(one_pair.difference.low[0])  # no band
    assert one_pair.speedup_ci is None


def test_a_bootstrap_bound_among_resamples_that_never_reach_the_target_reads_never():
    """One strong DATE seed of four: the mean reaches POTO's final AP only in resamples that draw it twice or
    more (about 26%), so the lower bound falls among those that never do."""
    curves = [{1: 0.40, 2: 0.45, 3: 0.50}] + [{1: 0.10, 2: 0.15, 3: 0.20}] * 3
    records = [record("dual", s, c) for s, c in enumerate(curves)]
    records += [record("o2o", s, {1: 0.1, 2: 0.2, 3: 0.3 + d}) for s, d in enumerate((0.0, 0.01, -0.01, 0.0))]
    report = report_of(records)
    dual = next(r for r in report.results if r.label == "DATE")
    assert dual.speedup is None and dual.speedup_ci.low is None and dual.speedup_ci.high is not None
    share = f"{100 * dual.speedup_ci.never / 2000:.1f}%"
    assert f"| DATE | 27.50 ± 15.00 | 30.00 | 3 | never (≤ 3) | – | [never, {dual.speedup_ci.high:.2f}×] | {share} |" \
        in to_markdown(report)
    saved = next(v for v in to_json(report)["variants"] if v["label"] == "DATE")["speedup_ci"]
    assert saved["low"] == "never" and saved["never"] == dual.speedup_ci.never


def test_resamples_where_poto_never_reaches_its_own_final_ap_are_left_out_and_counted():
    """POTO's runs differ in length: its mean curve's last point is one run's; resamples drawing only the long,
    weaker run's end below the target have no POTO epoch (runs of equal length always reach their own mean)."""
    # all three: target 0.40, reached at epoch 3 (0.30 and 0.50); drawing seed 0 twice and seed 1: target 0.367,
    # epoch 2 at 0.333, epoch 3 at 0.30 (seed 1 alone): never
    records = [record("o2o", 0, {1: 0.1, 2: 0.4}), record("o2o", 1, {1: 0.1, 2: 0.2, 3: 0.3}),
               record("o2o", 2, {1: 0.1, 2: 0.35, 3: 0.5})]
    records += [record("dual", s, {1: 0.2 + s / 100, 2: 0.4, 3: 0.45}) for s in (0, 1, 2)]
    report = report_of(records)
    dual = next(r for r in report.results if r.label == "DATE")
    ci = dual.speedup_ci
    assert ci is not None and 0 < ci.undefined < 2000
    idx = np.random.default_rng(0).integers(0, 3, size=(2000, 3))  # the fixed-seed draw of the pairs
    by_seed = sorted(records, key=lambda r: (r.groups["assigner"], r.seed))
    variant, baseline = [r.curve for r in by_seed[:3]], [r.curve for r in by_seed[3:]]  # dual, then o2o
    assert ci.undefined == 2000 - len(_speedups_by_loop(variant, baseline, idx, idx))
    assert f"DATE [schedule 1x]: in {ci.undefined} of 2000 bootstrap resamples POTO's mean curve never reaches " \
           "its own final mean AP; the speed-up's interval is over the others." in report.notes


def test_what_cannot_be_computed_is_said():
    records = [record("o2o", 0, {1: 0.2, 2: 0.4}), record("o2o", 1, {1: 0.2, 2: 0.4}),
               record("dual", 0, {1: 0.1, 2: 0.3}, missing={"APs": "-1 from COCOeval (no ground truth of that size)"}),
               record("o2m", 0, {1: 0.1, 2: 0.2}, schedule="3x")]
    report = report_of(records)
    notes = "\n".join(report.notes)
    assert "DATE [schedule 1x]: one run (seed 0): no std, confidence band or p-value." in notes
    assert "DATE [schedule 1x]: no usable val/APs in dual_0 (-1 from COCOeval (no ground truth of that size)); " \
           "its APs uses the other runs only (none: not computed)." in notes
    assert "DATE [schedule 1x]: p-values need >= 2 runs on both sides (1 vs 2 of POTO): differences only (no " \
           "interval, power or bootstrap)." in notes
    assert "DATE [schedule 1x]: the seeds differ from POTO's (no seed DATE only; seed 1 POTO only)" in notes
    assert "DATE [schedule 1x]: its mean val/AP never reaches POTO's final mean AP 40.00 within its 2 epochs" in notes
    assert "FCOS [schedule 3x]: no POTO (o2o) runs in the same setting" in notes
    assert "POTO [schedule 1x]: both sides have zero variance" not in notes  # a baseline is not compared to itself
    dual = next(r for r in report.results if r.label == "DATE")
    assert dual.speedup is None and dual.versus["AP"].p is None and "APs" not in dual.final
    assert dual.speedup_ci is None and dual.power is None
    md = to_markdown(report)
    assert "| DATE | 1 | 0 | 30.00 | 30.00 | 30.00 | – | 30.00 | 30.00 |" in md
    assert "| DATE (unpaired) | POTO | AP | -10.00 | n/a | n/a | – |" in md
    assert "| | | APs | – | – | – | – |" in md
    assert "never (≤ 2)" in md
    assert "- DATE vs POTO: not computable (needs >= 2 runs on each side)." in md


def test_holm_leaves_out_a_metric_without_p_and_says_so():
    records, finals = _five_seeds()
    for r in records:  # no small objects in DATE's val split: COCOeval's -1
        if r.groups["assigner"] == "dual":
            r.final.pop("APs")
            r.missing["APs"] = "-1 from COCOeval"
    report = report_of(records)
    dual = next(r for r in report.results if r.label == "DATE")
    tested = [m for m in METRICS if m != "APs"]
    pvalues = [scipy_stats.ttest_rel([finals["dual"][s][m] for s in range(5)],
                                     [finals["o2o"][s][m] for s in range(5)]).pvalue for m in tested]
    assert [dual.holm[m] for m in tested] == pytest.approx(_holm_by_procedure(pvalues))  # m = 5
    assert "DATE [schedule 1x]: Holm's adjustment is over the 5 metrics with a p-value; APs had none and are " \
           "left out of it." in report.notes


def test_3dmf_variants_get_their_own_baseline():
    records = [record("o2o", s, {1: 0.3}, use_3dmf=u) for s in (0, 1) for u in ("False", "True")]
    records += [record("dual", s, {1: 0.35}, use_3dmf=u) for s in (0, 1) for u in ("False", "True")]
    report = report_of(records)
    labels = {r.label: r for r in report.results}
    assert set(labels) == {"POTO", "POTO + 3DMF", "DATE", "DATE + 3DMF"}
    assert labels["DATE + 3DMF"].baseline.label == "POTO + 3DMF"
    assert labels["DATE"].baseline.label == "POTO"
def test_a_dual_variant_with_an_o2m_switch_is_compared_with_the_one_poto():
    """POTO has no o2m branch: DATE with model.share_towers=false (an o2m-only switch) still has it as baseline,
    while a setting key (the backbone) does separate them."""
    def with_params(r, **params):
        r.groups.update({f"params.{k}": v for k, v in params.items()})
        return r

    records = [with_params(record("o2o", s, {1: 0.1, 2: 0.2}), **{"model.share_towers": "True"}) for s in (0, 1)]
    records += [with_params(record("dual", s, {1: 0.2, 2: 0.3}), **{"model.share_towers": "False"}) for s in (0, 1)]
    other = with_params(record("dual", 2, {1: 0.2, 2: 0.3}), **{"model.share_towers": "True"})
    other.groups["backbone"] = "resnet50"
    report = report_of([*records, other])
    unshared = next(r for r in report.results if r.label.startswith("DATE") and "share_towers" in r.label
                    and "R50" not in r.label)
    assert unshared.versus["AP"].delta == pytest.approx(0.10)
    assert any("R50" in note and "no POTO" in note for note in report.notes)


def test_runs_that_differ_in_a_logged_param_are_separate_variants():
    """optim.lr differs: two experiments, each with its own POTO; bookkeeping params (eval_every, num_workers,
    tracking.uri) and params a group tag names (schedule.epochs) do not split or label anything."""
    def params(lr, seed):
        return {"optim.lr": lr, "seed": str(seed), "eval_every": str(1 + seed), "num_workers": "0",
                "tracking.uri": f"sqlite:///run{seed}.db", "schedule.epochs": "3"}

    records = [record(a, s, {1: base + s / 100, 2: base + 0.1 + gain}, params=params(lr, s), run_id=f"{a}-{s}-{lr}")
               for lr, base in (("0.01", 0.1), ("0.02", 0.2)) for a, gain in (("o2o", 0.0), ("dual", 0.05))
               for s in (0, 1)]
    report = report_of(records)
    by_label = {r.label: r for r in report.results}
    assert set(by_label) == {"POTO (lr=0.01)", "POTO (lr=0.02)", "DATE (lr=0.01)", "DATE (lr=0.02)"}
    for lr in ("0.01", "0.02"):
        dual = by_label[f"DATE (lr={lr})"]
        assert dual.seeds == ["0", "1"] and dual.baseline.label == f"POTO (lr={lr})"
        assert dual.versus["AP"].delta == pytest.approx(0.05)
    assert "The runs differ in the logged params optim.lr (0.01, 0.02): runs that differ in them are separate " \
           "variants (named in the labels), never seeds of one." in report.notes


def test_params_that_a_group_tag_already_names_stay_out_of_the_labels():
    """schedule.epochs follows the schedule tag (the panel says it); dataset.num_train varies within one
    dataset=synthetic tag, so it splits and labels."""
    records = [record(a, s, {1: 0.1, 2: 0.2 + s / 100}, schedule=sched,
                      params={"schedule.epochs": epochs, "dataset.num_train": n}, run_id=f"{a}{s}{sched}{n}")
               for a in ("o2o", "dual") for s in (0, 1) for sched, epochs in (("1x", "12"), ("3x", "36"))
               for n in ("16", "224")]
    report = report_of(records)
    assert {r.label for r in report.results} == {"POTO (num_train=16)", "POTO (num_train=224)",
                                                 "DATE (num_train=16)", "DATE (num_train=224)"}
    assert all(r.n == 2 and r.baseline.groups["params.dataset.num_train"] == r.variant.groups["params.dataset.num_train"]
               and r.baseline.panel == r.variant.panel for r in report.results)
    assert [n for n in report.notes if n.startswith("The runs differ")] == [
        "The runs differ in the logged params dataset.num_train (16, 224): runs that differ in them are separate "
        "variants (named in the labels), never seeds of one."]


def test_a_variant_is_compared_only_with_poto_in_its_own_setting():
    records = [record("o2o", s, {1: 0.1, 2: 0.2}, params={"optim.lr": "0.01"}) for s in (0, 1)]
    records += [record("dual", s, {1: 0.2, 2: 0.3}, params={"optim.lr": "0.02"}) for s in (0, 1)]
    report = report_of(records)
    dual = next(r for r in report.results if r.variant.assigner == "dual")
    assert dual.label == "DATE (lr=0.02)" and dual.baseline is None and dual.versus == {}
    assert any(n.startswith("DATE (lr=0.02) [schedule 1x]: no POTO (o2o) runs in the same setting") and
               "optim.lr=0.02" in n for n in report.notes)


def test_two_runs_of_one_seed_in_one_variant_are_refused():
    records = [record("o2o", s, {1: 0.1, 2: 0.2}) for s in (0, 1)]
    records += [record("dual", 0, {1: 0.2, 2: 0.3}, run_id="first", sweep_id="aaa"),
                record("dual", 0, {1: 0.2, 2: 0.31}, run_id="second", sweep_id="bbb")]
    with pytest.raises(AnalysisError) as error:
        report_of(records)
    message = str(error.value)
    assert "DATE [schedule 1x], seed 0: dual_0 (run first, sweep aaa) and dual_0 (run second, sweep bbb)" in message
    assert "repeats, not seeds" in message and "--sweep-id" in message


# Draws the figures of two variants in a fresh interpreter and prints the backend, then the files' magic bytes.
_DRAW = """
import sys
from pathlib import Path

import matplotlib
from analysis.difference_figure import difference_figure
from analysis.plots import convergence_figure
from test_analysis_report import record, report_of

records = [record(a, s, {1: 0.1 + s / 50, 2: 0.3, 3: 0.4 + len(a) * s / 100}) for a in ("o2o", "dual") for s in (0, 1)]
report = report_of(records)
paths = convergence_figure(report, Path(sys.argv[1])) + difference_figure(report, Path(sys.argv[1]))
print(matplotlib.get_backend(), *(p.read_bytes()[:4] for p in paths))
"""


@pytest.mark.slow
def test_the_figure_module_leaves_the_callers_backend_alone(tmp_path):
    """A notebook's (here: svg) backend survives importing analysis.plots / difference_figure and drawing."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    result = subprocess.run([sys.executable, "-c", _DRAW, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["svg", *[repr(b"\x89PNG"), repr(b"%PDF")] * 2]
