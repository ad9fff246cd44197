"""analysis.convergence on a real MLflow SQLite store filled through MlflowClient (no training): runs that differ
in a logged param are separate variants, a repeated seed is refused with exit code 2, and --tracking-uri takes
the plain path of the store's file."""
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import convergence

EXPERIMENT = "analysis_params"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture
def store(tmp_path):
    """(the SQLite file, a client, the experiment id)."""
    path = tmp_path / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    return path, client, experiment_id


def log_run(store, *, assigner, seed, lr, sweep_id, gain=0.0, num_workers=2):
    """A FINISHED run as date.train logs it: group tags, seed and sweep_id tags, its config as params, val/*
    per epoch."""
    _, client, experiment_id = store
    tags = {"assigner": assigner, "schedule": "1x", "backbone": "resnet18", "branch_weighting": "equal",
            "dataset": "synthetic", "seed": str(seed), "sweep_id": sweep_id}
    run = client.create_run(experiment_id, run_name=f"{assigner}-1x-resnet18-s{seed} optim.lr={lr}", tags=tags)
    params = {"seed": seed, "optim.lr": lr, "assigner.mode": assigner, "model.use_3dmf": False, "name": "date",
              "num_workers": num_workers, "tracking.uri": f"sqlite:///elsewhere/{sweep_id}.db"}
    curve = {epoch: 0.1 * epoch + gain + seed / 100 for epoch in (1, 2, 3)}
    metrics = [Metric(f"val/{m}", ap, 0, epoch) for epoch, ap in curve.items() for m in METRICS]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_runs_with_another_learning_rate_are_another_variant(store, tmp_path):
    for lr in ("0.01", "0.02"):
        for seed in (0, 1):
            log_run(store, assigner="o2o", seed=seed, lr=lr, sweep_id="s1", num_workers=seed)  # workers: bookkeeping
            log_run(store, assigner="dual", seed=seed, lr=lr, sweep_id="s1", gain=0.02 if lr == "0.01" else 0.04)
    summary = convergence.main(["--tracking-uri", str(store[0]), "--experiment", EXPERIMENT, "--out",
                                str(tmp_path / "out")])
    by_label = {v["label"]: v for v in summary["variants"]}
    assert set(by_label) == {"POTO (lr=0.01)", "POTO (lr=0.02)", "DATE (lr=0.01)", "DATE (lr=0.02)"}
    for label, v in by_label.items():
        assert v["n"] == 2 and v["seeds"] == ["0", "1"], label
    for lr, gain in (("0.01", 0.02), ("0.02", 0.04)):
        dual = by_label[f"DATE (lr={lr})"]
        assert dual["baseline"] == f"POTO (lr={lr})" and dual["paired"]
        assert dual["versus_baseline"]["AP"]["delta"] == pytest.approx(gain)
    assert any("optim.lr (0.01, 0.02)" in note for note in summary["notes"])
    assert (tmp_path / "out" / "difference.png").stat().st_size > 0


def test_a_repeated_seed_is_refused_until_one_sweep_is_chosen(store, tmp_path, capsys):
    for seed in (0, 1):
        log_run(store, assigner="o2o", seed=seed, lr="0.01", sweep_id="first")
        log_run(store, assigner="dual", seed=seed, lr="0.01", sweep_id="first")
    again = log_run(store, assigner="dual", seed=0, lr="0.01", sweep_id="second")  # the same config and seed
    args = ["--tracking-uri", f"sqlite:///{store[0]}", "--experiment", EXPERIMENT, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        convergence.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "repeats, not seeds" in err and f"(run {again}, sweep second)" in err and "sweep first)" in err
    assert "DATE [schedule 1x], seed 0:" in err and "--sweep-id" in err and "Traceback" not in err
    summary = convergence.main([*args, "--sweep-id", "first"])
    assert {v["label"]: v["n"] for v in summary["variants"]} == {"POTO": 2, "DATE": 2}


def test_tracking_uri_as_a_plain_path(store, tmp_path, capsys, monkeypatch):
    log_run(store, assigner="o2o", seed=0, lr="0.01", sweep_id="s")
    summary = convergence.main(["--tracking-uri", str(store[0]), "--experiment", EXPERIMENT, "--out",
                                str(tmp_path / "out")])
    assert f"sqlite:///{store[0]}" in summary["filters"]  # sqlite:////abs/path
    monkeypatch.chdir(tmp_path)
    relative = convergence.main(["--tracking-uri", "mlflow.db", "--experiment", EXPERIMENT, "--out", "out2"])
    assert relative["variants"][0]["run_ids"] == summary["variants"][0]["run_ids"]
    for missing, what in ((tmp_path / "nowhere" / "mlflow.db", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit) as exit_info:
            convergence.main(["--tracking-uri", str(missing), "--experiment", EXPERIMENT, "--out", "unused"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"--tracking-uri {missing}: {missing} {what}." in err
        assert "maintenance" not in err and "Traceback" not in err
