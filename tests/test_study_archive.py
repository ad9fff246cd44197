"""experiments/study_archive.py: a study's runs leave one real MLflow SQLite store as JSON files and enter another,
where analysis.convergence reports exactly what it reported on the original; an unfinished run stays behind, a
second import adds nothing, and a file that is not a run record is refused by name."""
import json
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import convergence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import study_archive  # noqa: E402

EXPERIMENT = "claim_study"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def fill(path: Path) -> MlflowClient:
    """{o2o, dual} x seeds 0-2 at 1x as date.train logs them, plus one RUNNING run."""
    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(path.parent / "artifacts").as_uri())
    for seed in range(3):
        for assigner, gain in (("o2o", 0.0), ("dual", 0.01 + 0.005 * seed)):
            tags = {"assigner": assigner, "schedule": "1x", "backbone": "resnet18", "branch_weighting": "equal",
                    "dataset": "synthetic", "seed": str(seed), "sweep_id": f"s{seed}"}
            run = client.create_run(experiment_id, run_name=f"{assigner}-1x-resnet18-s{seed}", tags=tags)
            params = [Param(k, str(v)) for k, v in {"seed": seed, "optim.lr": 2e-4, "assigner.mode": assigner,
                                                    "model.use_3dmf": False}.items()]
            metrics = [Metric(f"val/{m}", 0.1 * epoch + gain + seed / 50 + i / 1000, 1_000 + epoch, epoch)
                       for epoch in range(1, 5) for i, m in enumerate(METRICS)]
            metrics.append(Metric("train/loss", 3.0, 1_000, 10))  # not a val/* metric: not archived
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id, "FINISHED")
    client.create_run(experiment_id, run_name="o2o-1x-resnet18-s3", tags={"schedule": "1x", "seed": "3"})
    return client


def report(store: Path, out: Path) -> dict:
    summary = convergence.main(["--tracking-uri", str(store), "--experiment", EXPERIMENT, "--out", str(out)])
    return {v["label"]: (v["n"], v["seeds"], v.get("versus_baseline")) for v in summary["variants"]}


def test_the_analysis_reads_the_same_from_the_archive_as_from_the_store(tmp_path, capsys):
    original = tmp_path / "a" / "mlflow.db"
    original.parent.mkdir()
    fill(original)
    assert study_archive.main(["export", "--tracking-uri", f"sqlite:///{original}", "--experiment", EXPERIMENT,
                               "--out", str(tmp_path / "archive")]) == 0
    files = sorted(p.relative_to(tmp_path / "archive").as_posix() for p in (tmp_path / "archive").rglob("*.json"))
    assert files == sorted(f"1x/{a}-1x-resnet18-s{s}.json" for a in ("o2o", "dual") for s in range(3))
    record = json.loads((tmp_path / "archive" / "1x" / "dual-1x-resnet18-s2.json").read_text())
    assert set(record["metrics"]) == {f"val/{m}" for m in METRICS} and len(record["metrics"]["val/AP"]) == 4

    copy = tmp_path / "b" / "mlflow.db"
    copy.parent.mkdir()
    assert study_archive.main(["import", str(tmp_path / "archive"), "--tracking-uri", f"sqlite:///{copy}"]) == 0
    assert "imported 6 of 6 archived runs into 'claim_study'" in capsys.readouterr().out
    assert report(copy, tmp_path / "out_b") == report(original, tmp_path / "out_a")

    study_archive.main(["import", str(tmp_path / "archive"), "--tracking-uri", f"sqlite:///{copy}"])
    assert "imported 0 of 6" in capsys.readouterr().out
    # exported again from the copy, a run keeps its original id: the archive does not change
    study_archive.main(["export", "--tracking-uri", f"sqlite:///{copy}", "--experiment", EXPERIMENT,
                        "--out", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "1x" / "dual-1x-resnet18-s2.json").read_text())
    assert again["run_id"] == record["run_id"] and again["metrics"] == record["metrics"]
    assert again["params"] == record["params"]
    capsys.readouterr()

    study_archive.main(["list", str(tmp_path / "archive")])
    listed = sorted(capsys.readouterr().out.splitlines())
    assert listed == sorted(f"1x {s} {a}" for a in ("o2o", "dual") for s in range(3))


def test_a_file_that_is_not_a_run_record_is_refused_by_name(tmp_path):
    (tmp_path / "1x").mkdir()
    (tmp_path / "1x" / "notes.json").write_text('{"AP": 0.3}')
    with pytest.raises(SystemExit, match=r"notes\.json: not a run record"):
        study_archive.main(["list", str(tmp_path)])
