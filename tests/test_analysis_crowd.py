"""analysis.convergence on runs that logged CrowdHuman's metrics (val/crowd/*): a real SQLite store filled through
MlflowClient (no training); the crowd section's numbers against scipy, MR^-2 counted as lower-better, the figure."""
import json

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from scipy import stats as scipy_stats

from analysis import convergence
from test_analysis_runs import METRICS, store  # noqa: F401  (the store fixture)
from test_analysis_stats import _holm_by_procedure

EXPERIMENT = "analysis_params"
EPOCHS = (1, 2, 3)
# final CrowdHuman values per (assigner, seed): POTO and DATE over three seeds
FINAL = {("o2o", 0): (0.80, 0.55, 0.70, 0.90), ("o2o", 1): (0.82, 0.52, 0.71, 0.93), ("o2o", 2): (0.79, 0.57, 0.69, 0.91),
         ("dual", 0): (0.83, 0.50, 0.72, 0.94), ("dual", 1): (0.84, 0.53, 0.74, 0.95), ("dual", 2): (0.80, 0.51, 0.70, 0.93)}
CROWD = ("crowd/AP", "crowd/mMR", "crowd/JI", "crowd/recall")


def log_crowd_run(store, assigner, seed, *, crowd=True):  # noqa: F811
    _, client, experiment_id = store
    tags = {"assigner": assigner, "schedule": "1x", "backbone": "resnet18", "branch_weighting": "equal",
            "dataset": "crowdhuman", "seed": str(seed), "sweep_id": "s"}
    run = client.create_run(experiment_id, run_name=f"{assigner}-s{seed}", tags=tags)
    metrics = [Metric(f"val/{m}", 0.1 * e + seed / 100, 0, e) for e in EPOCHS for m in METRICS]
    if crowd:  # the last epoch holds FINAL; earlier epochs something else
        metrics += [Metric(f"val/{name}", value if e == EPOCHS[-1] else value / 2, 0, e)
                    for e in EPOCHS for name, value in zip(CROWD, FINAL[assigner, seed])]
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param("assigner.mode", assigner), Param("model.use_3dmf", "False")])
    client.set_terminated(run.info.run_id, "FINISHED")


def _analyse(store, tmp_path):  # noqa: F811
    return convergence.main(["--tracking-uri", str(store[0]), "--experiment", EXPERIMENT, "--out", str(tmp_path / "out")])


def test_crowd_metrics_are_tested_like_ap_and_plotted(store, tmp_path):  # noqa: F811
    for (assigner, seed) in FINAL:
        log_crowd_run(store, assigner, seed)
    summary = _analyse(store, tmp_path)
    by_label = {c["label"]: c for c in summary["crowd"]}
    assert set(by_label) == {"POTO", "DATE"}
    date = by_label["DATE"]
    pvalues = []
    for i, metric in enumerate(CROWD):
        ours, theirs = ([FINAL[a, s][i] for s in (0, 1, 2)] for a in ("dual", "o2o"))
        assert date["final"][metric]["mean"] == pytest.approx(np.mean(ours))
        versus = date["versus_baseline"][metric]
        assert versus["paired"] and versus["delta"] == pytest.approx(np.mean(ours) - np.mean(theirs))
        assert versus["p"] == pytest.approx(scipy_stats.ttest_rel(ours, theirs).pvalue)
        lower = metric == "crowd/mMR"
        assert versus["better"] == sum((a < b) if lower else (a > b) for a, b in zip(ours, theirs))
        pvalues.append(versus["p"])
    for metric, adjusted in zip(CROWD, _holm_by_procedure(pvalues)):
        assert date["versus_baseline"][metric]["holm_p"] == pytest.approx(adjusted)
    assert date["versus_baseline"]["crowd/mMR"]["better"] == 2  # DATE's MR^-2 is lower on seeds 0 and 2
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## CrowdHuman metrics" in text and "| DATE | POTO | 1x | AP | +2.00" in text
    assert "| | | | MR^-2 | -3.33 [" in text
    assert json.loads((tmp_path / "out" / "results.json").read_text())["crowd"] == json.loads(json.dumps(summary["crowd"]))
    for suffix in ("png", "pdf"):
        assert (tmp_path / "out" / f"crowd.{suffix}").stat().st_size > 0


def test_unpaired_seeds_use_welch_and_runs_without_crowd_metrics_add_no_section(store, tmp_path):  # noqa: F811
    for (assigner, seed) in FINAL:
        if (assigner, seed) != ("dual", 2):
            log_crowd_run(store, assigner, seed)
    summary = _analyse(store, tmp_path)
    versus = {c["label"]: c for c in summary["crowd"]}["DATE"]["versus_baseline"]["crowd/JI"]
    ours, theirs = [FINAL["dual", s][2] for s in (0, 1)], [FINAL["o2o", s][2] for s in (0, 1, 2)]
    assert not versus["paired"] and versus["better"] is None
    assert versus["p"] == pytest.approx(scipy_stats.ttest_ind(ours, theirs, equal_var=False).pvalue)

    plain = tmp_path / "plain"
    plain.mkdir()
    other = (plain / "mlflow.db", *store[1:])
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{other[0]}")
    other = (other[0], client, client.create_experiment(EXPERIMENT, artifact_location=(plain / "a").as_uri()))
    for seed in (0, 1):
        log_crowd_run(other, "o2o", seed, crowd=False)
    summary = convergence.main(["--tracking-uri", str(other[0]), "--experiment", EXPERIMENT, "--out", str(plain / "out")])
    assert "crowd" not in summary and not (plain / "out" / "crowd.png").exists()
    assert "CrowdHuman" not in (plain / "out" / "results.md").read_text()
