"""The analysis CLIs on real smoke trainings logged to a real MLflow tracking server on 127.0.0.1.

One module-scoped fixture trains once for every test here: a sweep of {o2o, dual} x seeds {0, 1}
(so paired p-values exist) and a single o2m run outside the sweep (a one-seed variant).
"""
import json
import math
import re
import shutil

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from analysis import convergence, duplicates
from conftest import REPO, SMOKE, run_in_process, sandbox_env
from test_analysis_stats import _holm_by_procedure

pytestmark = [pytest.mark.slow,  # every test reads the module's trainings,
              pytest.mark.xdist_group("analysis_cli")]  # on one xdist worker: they run once

EXPERIMENT = "analysis_smoke"  # of its own on the session's MLflow server
# SMOKE, with a learning rate high enough that 6 iterations give a non-zero, seed-dependent AP
# (at the default lr every smoke run scores exactly 0 and no statistic would be tested).
TRAIN = [*SMOKE, "optim.lr=0.02", "schedule.epochs=3", "schedule.max_iters=6", "schedule.lr_steps=[2]",
         f"tracking.experiment={EXPERIMENT}"]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache, mlflow_server):
    root = tmp_path_factory.mktemp("analysis")
    env = sandbox_env(root, data_cache, tracking_uri=mlflow_server.url)
    try:
        sweep = run_in_process("date.train", ["-m", "assigner=o2o,dual", "seed=0,1", *TRAIN,
                                              f"hydra.sweep.dir={root / 'sweep'}"], env=env, cwd=root)
        single = run_in_process("date.train", ["assigner=o2m", "seed=0", *TRAIN], env=env, cwd=root)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert single.returncode == 0, single.stderr[-3000:]
        yield {"url": mlflow_server.url, "root": root, "env": env,
               "sweep_id": (root / "sweep" / "sweep_id").read_text().strip(),
               "checkpoints": sorted(root.glob("sweep/*/model_final.pth")) + sorted(root.glob("outputs/**/model_final.pth"))}
    finally:
        shutil.rmtree(root, ignore_errors=True)  # five runs' checkpoints: ~1 GB the rest of the suite can use


def logged_finals(url, sweep_id=None):
    """{assigner: {metric: [final value per run]}} read straight from MLflow, independently of analysis.runs."""
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.sweep_id = '{sweep_id}'" if sweep_id else "")
    out = {}
    for run in sorted(runs, key=lambda r: r.data.tags["seed"]):
        if run.info.status != "FINISHED":
            continue
        per_metric = out.setdefault(run.data.tags["assigner"], {})
        for metric in METRICS:
            history = client.get_metric_history(run.info.run_id, f"val/{metric}")
            per_metric.setdefault(metric, []).append(max(history, key=lambda m: m.step).value)
        per_metric.setdefault("curves", []).append({m.step: m.value for m in client.get_metric_history(
            run.info.run_id, "val/AP")})
    return out


def test_sweep_report_numbers_are_the_logged_metrics(trained, tmp_path):
    out = tmp_path / "report"
    result = run_in_process("analysis.convergence", ["--tracking-uri", trained["url"], "--experiment", EXPERIMENT,
                                                     "--sweep-id", trained["sweep_id"], "--out", str(out)],
                            env=trained["env"], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("convergence.png", "convergence.pdf", "difference.png", "difference.pdf", "results.md",
                 "results.tex", "results.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "convergence.pdf").read_bytes().startswith(b"%PDF")
    logged = logged_finals(trained["url"], trained["sweep_id"])
    assert sorted(logged) == ["dual", "o2o"]
    assert any(v > 0 for v in logged["o2o"]["AP"] + logged["dual"]["AP"]), "smoke runs must learn something"
    report = json.loads((out / "results.json").read_text())
    by_label = {v["label"]: v for v in report["variants"]}
    assert set(by_label) == {"POTO", "DATE"}
    markdown = (out / "results.md").read_text()
    for label, assigner in (("POTO", "o2o"), ("DATE", "dual")):
        v = by_label[label]
        assert v["n"] == 2 and v["seeds"] == ["0", "1"] and v["schedule"] == "smoke"
        for metric in METRICS:
            values = logged[assigner][metric]
            assert v["final"][metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert v["final"][metric]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        cells = " | ".join(f"{100 * np.mean(logged[assigner][m]):.2f} ± {100 * np.std(logged[assigner][m], ddof=1):.2f}"
                           for m in METRICS)
        assert f"| {label} | 2 | 0,1 | {cells} |" in markdown
        assert [r["seed"] for r in v["runs"]] == ["0", "1"]  # each run's own numbers, for pooling later seeds
        assert sorted(r["final"]["AP"] for r in v["runs"]) == sorted(logged[assigner]["AP"])
        assert sorted(tuple(r["curve"].values()) for r in v["runs"]) == \
            sorted(tuple(c[e] for e in sorted(c)) for c in logged[assigner]["curves"])
        epochs = sorted(logged[assigner]["curves"][0])
        assert v["curve"]["epochs"] == epochs == [1, 2, 3]
        assert v["curve"]["mean"] == pytest.approx([np.mean([c[e] for c in logged[assigner]["curves"]]) for e in epochs])
    _check_paired_effects(by_label["DATE"], logged, markdown)
    assert result.stdout.startswith(markdown)  # the CLI prints the Markdown
    for name in ("difference.png", "difference.pdf"):
        assert (out / name).read_bytes()[:4] == (b"\x89PNG" if name.endswith("png") else b"%PDF"), name
    assert "## Schedule smoke" in markdown and "### Convergence speed" in markdown
    tex = (out / "results.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and "POTO" in tex


def _check_paired_effects(dual, logged, markdown):
    """DATE vs POTO paired by seed (logged_finals lists both in seed order): the JSON and the Markdown row of each
    metric against scipy's paired t-test, the t-interval from scipy's t quantile and Holm run by brute force."""
    assert dual["paired"] and dual["baseline"] == "POTO"
    pvalues, rows = [], []
    for metric in METRICS:
        a, b = np.array(logged["dual"][metric]), np.array(logged["o2o"][metric])
        if min(a.min(), b.min()) < 0:  # COCOeval's -1: the analysis leaves the metric out
            assert metric not in dual["versus_baseline"]
            pvalues.append(None)
            continue
        d = a - b
        p = math.nan if np.ptp(d) <= 1e-12 * np.abs(d).max() else scipy_stats.ttest_rel(a, b).pvalue
        half = scipy_stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
        pvalues.append(p)
        rows.append((metric, d, half, p))
        saved = dual["versus_baseline"][metric]
        assert saved["delta"] == pytest.approx(d.mean(), abs=1e-12)
        assert saved["ci"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-12)
        assert saved["p"] == ("undefined" if math.isnan(p) else pytest.approx(p))
        assert (saved["wins"], saved["ties"]) == ((d > 0).sum(), (d == 0).sum())
    holm = dict(zip(METRICS, _holm_by_procedure(pvalues)))
    for metric, d, half, p in rows:
        cell = f"{100 * d.mean():+.2f} [{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}]"
        ties = (d == 0).sum()
        wins = f"{(d > 0).sum()}/{len(d)}" + (f", {ties} tie{'s' if ties > 1 else ''}" if ties else "")
        head = "| DATE | POTO |" if metric == "AP" else "| | |"
        assert f"{head} {metric} | {cell} | {_p(p)} | {_p(holm[metric])} | {wins} |" in markdown, metric
    d_ap = np.subtract(logged["dual"]["AP"], logged["o2o"]["AP"])
    spread = np.ptp(d_ap) > 1e-12 * np.abs(d_ap).max()
    assert "### Power (AP)" in markdown and ("- DATE vs POTO: n = 2 pairs, sd of the difference "
                                             f"{100 * np.std(d_ap, ddof=1):.2f} AP: " if spread else
                                             "- DATE vs POTO: not computable (no spread") in markdown


def _p(p):
    if math.isnan(p):
        return "undefined"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def test_single_seed_variant_and_unfinished_runs_are_reported(trained, tmp_path):
    client = MlflowClient(trained["url"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    # a training that has just started: RUNNING, no metrics yet
    running = client.create_run(exp.experiment_id, run_name="still_running",
                                tags={"assigner": "dual", "schedule": "smoke", "seed": "7"})
    out = tmp_path / "report"
    summary = convergence.main(["--tracking-uri", trained["url"], "--experiment", EXPERIMENT,
                                "--tag", "schedule=smoke", "--out", str(out)])
    labels = {v["label"]: v for v in summary["variants"]}
    assert set(labels) == {"FCOS", "POTO", "DATE"}
    fcos = labels["FCOS"]
    logged = logged_finals(trained["url"])["o2m"]
    assert fcos["n"] == 1 and fcos["final"]["AP"] == {"mean": logged["AP"][0], "std": None, "n": 1, "ci95": None}
    assert fcos["versus_baseline"]["AP"]["p"] is None
    notes = "\n".join(summary["notes"])
    assert "FCOS [schedule smoke]: one run (seed 0): no std, confidence band or p-value." in notes
    assert f"Excluded run still_running ({running.info.run_id}): status RUNNING (only FINISHED runs are analysed)." in notes
    assert "p-values need >= 2 runs on both sides (1 vs 2 of POTO)" in notes
    markdown = (out / "results.md").read_text()
    assert re.search(r"\| FCOS \| 1 \| 0 \| [0-9.]+ \| ", markdown)  # a mean, no ± std
    assert re.search(r"\| FCOS \(unpaired\) \| POTO \| AP \| [+-][0-9.]+ \| n/a \| n/a \| – \|", markdown)
    assert "FCOS [schedule smoke]: the seeds differ from POTO's (no seed FCOS only; seed 1 POTO only)" in notes
    assert "status RUNNING" in markdown.split("## Could not compute")[1]


def test_no_matching_runs_is_an_error_naming_the_filters(trained, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convergence.main(["--tracking-uri", trained["url"], "--experiment", EXPERIMENT, "--sweep-id", "nope",
                          "--tag", "schedule=3x", "--out", "unused"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"No finished runs with val/AP match experiment '{EXPERIMENT}' in {trained['url']}, sweep_id nope, " \
           "tag schedule=3x." in err
    with pytest.raises(SystemExit) as exit_info:
        convergence.main(["--tracking-uri", trained["url"], "--experiment", "nope", "--out", "unused"])
    assert exit_info.value.code == 2
    assert f"--experiment nope: no such experiment in {trained['url']}. Experiments there: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        convergence.main(["--tag", "schedule", "--out", "unused"])
    assert exit_info.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err


def test_duplicates_with_and_without_nms(trained, tmp_path):
    out = tmp_path / "dup"
    rows = duplicates.main(["--checkpoint", *map(str, trained["checkpoints"]), "--out", str(out)])
    assert sorted(r.variant for r in rows) == ["dual", "dual", "o2m", "o2o", "o2o"]
    logged = logged_finals(trained["url"])
    for row in rows:
        assert row.images == 4 and 0.0 <= row.duplicate_rate_raw <= 1.0 and 0.0 <= row.duplicate_rate_nms <= 1.0
        assert row.detections_nms <= row.detections_raw <= 100 * row.images
        if row.variant != "o2m":  # o2o and DATE infer without NMS: raw detections are what training evaluated
            assert any(row.ap_raw == pytest.approx(ap, abs=1e-12) for ap in logged[row.variant]["AP"])
    saved = json.loads((out / "duplicates.json").read_text())
    assert [r["checkpoint"] for r in saved] == [str(p) for p in trained["checkpoints"]]
    markdown = (out / "duplicates.md").read_text()
    assert "| FCOS | 0 |" in markdown and "Mean over the checkpoints of each model:" in markdown
