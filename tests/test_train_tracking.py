"""MLflow tracking: where the store is, fast failure, buffered metrics across an outage, no duplicate steps,
what a training run records (name, tags, masked URI, system metrics, datasets)."""
import getpass
import json
import queue
import re
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, SMOKE, free_port, run_in_process
from date.data.build import DatasetConfig
from date.data.synthetic import SyntheticParams
from date.runtime import tracking
from date.runtime.run_tracker import RunTracker
from date.runtime.tracking import TrackingError
from date.training.hooks.level_diagnostics import LEVELS


def _steps(uri, run_id, key):
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_uri(None) == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.resolve_uri(None) == "http://127.0.0.1:1"
    assert tracking.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_unreachable_server_is_reported_at_once():
    start = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"):
        tracking.check_reachable(f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 6


def test_sqlite_store_and_artifacts_live_next_to_each_other(tmp_path):
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "e")
    assert tracking.ensure_experiment(uri, "e") == experiment_id
    artifacts = MlflowClient(uri).get_experiment(experiment_id).artifact_location
    assert artifacts == (tmp_path / "db" / "mlartifacts").as_uri()


def test_resumed_tracker_skips_logged_steps_and_sends_checkpointed_ones(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = RunTracker.start(uri=uri, experiment="e", run_dir=tmp_path / "run", run_name="r", tags={"a": "b"})
    for step in (1, 2, 3):
        first.log_metrics({"train/loss": step}, step=step)
    assert first.flush()
    first.log_metrics({"train/loss": 4.0}, step=4)  # queued, not sent when the process dies
    pending = first.pending_state()

    run_id = (tmp_path / "run" / tracking.RUN_ID_FILE).read_text().strip()
    again = RunTracker.start(uri=uri, experiment="e", run_dir=tmp_path / "run", run_name="r", tags={}, run_id=run_id)
    assert again.run_id == first.run_id
    again.restore_pending(pending)
    for step in (2, 3, 4, 5):  # the resumed loop recomputes steps after its checkpoint
        again.log_metrics({"train/loss": step}, step=step)
    assert again.flush()
    assert _steps(uri, run_id, "train/loss") == [1, 2, 3, 4, 5]
    again.log_params({"x": 1})
    again.log_params({"x": 1, "y": 2})  # re-logging the same value on resume is fine
    assert MlflowClient(uri).get_run(run_id).data.params == {"x": "1", "y": "2"}


@pytest.mark.slow
def test_metrics_survive_a_server_outage(restartable_mlflow_server, tmp_path):
    mlflow_server = restartable_mlflow_server  # stopped and started again below
    tracker = RunTracker.start(uri=mlflow_server.url, experiment="e", run_dir=tmp_path / "run", run_name="r",
                               tags={}, run_id=None)
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert tracker.flush()

    mlflow_server.stop()
    start = time.monotonic()
    for step in (2, 3):
        tracker.log_metrics({"train/loss": float(step)}, step=step)
        assert not tracker.flush()  # training goes on; the metrics stay queued
    assert tracker.num_pending == 2 and time.monotonic() - start < 20
    assert not tracker.flush()  # within the retry wait: no new attempt, no delay
    assert time.monotonic() - start < 20

    mlflow_server.start()
    tracker.log_metrics({"train/loss": 4.0}, step=4)
    assert tracker.flush(force=True) and tracker.num_pending == 0
    assert _steps(mlflow_server.url, tracker.run_id, "train/loss") == [1, 2, 3, 4]


def _smoke(**keys) -> list[str]:
    """SMOKE with some keys replaced or added."""
    args = [a for a in SMOKE if a.split("=")[0] not in keys]
    return [*args, *(f"{k}={v}" for k, v in keys.items())]


def _git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def _inputs(run) -> dict:
    """{context: dataset} of a run's dataset inputs."""
    return {tag.value: i.dataset for i in run.inputs.dataset_inputs for tag in i.tags
            if tag.key == "mlflow.data.context"}


def test_run_name_says_what_ran_and_which_keys_the_command_changed():
    choices = {"assigner": "o2o", "schedule": "3x", "backbone": "resnet50", "dataset": "coco"}
    overrides = ["assigner=o2o", "schedule=3x", "seed=2", "optim.lr=1e-3", "dataset=coco", "log_every=1",
                 "tracking.uri=http://u:p@host:5000"]
    name = tracking.mlflow_run_name(choices, 2, overrides, exclude=["log_every", "tracking.uri"])
    assert name == "o2o-3x-resnet50-s2 dataset=coco optim.lr=1e-3"
    long = tracking.mlflow_run_name(choices, 0, [f"dataset.train_ann=/{'x' * 300}.json"])
    assert len(long) == tracking.RUN_NAME_MAX and long.startswith("o2o-3x-resnet50-s0 dataset.train_ann=/xxx")


def test_passwords_in_uris_are_masked():
    """(A reachable server with a password in its URI: the training run below.)"""
    assert tracking.mask_credentials("API request to http://user:s3:cret@host:5000/api/2.0 failed") == \
        "API request to http://user:***@host:5000/api/2.0 failed"
    for unchanged in ("sqlite:////tmp/x.db", "http://host:5000/a@b", "https://user@host"):
        assert tracking.mask_credentials(unchanged) == unchanged
    with pytest.raises(TrackingError) as error:
        tracking.check_reachable(f"http://user:s3cret@127.0.0.1:{free_port()}")
    assert "s3cret" not in str(error.value) and "user:***@" in str(error.value)


def test_dataset_digests_tell_data_apart_and_a_continued_run_logs_them_once(tmp_path):
    ann = {name: tmp_path / f"{name}.json" for name in ("a", "b", "a_copy")}
    ann["a"].write_text(json.dumps({"images": [1]}))
    ann["b"].write_text(json.dumps({"images": [2]}))
    ann["a_copy"].write_text(ann["a"].read_text())
    coco = DatasetConfig(kind="coco_json")
    digest = {k: tracking.dataset_inputs(coco, "coco_json", {"train": p})["train"][2] for k, p in ann.items()}
    assert digest["a"] == digest["a_copy"] != digest["b"]
    synthetic = tracking.dataset_inputs(DatasetConfig(), "synthetic", {"train": ann["a"], "val": ann["a"]})
    other = tracking.dataset_inputs(DatasetConfig(noise=8.0), "synthetic", {"train": ann["a"], "val": ann["a"]})
    assert synthetic["train"][2] != synthetic["val"][2] != other["val"][2] != synthetic["train"][2]  # not the file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = RunTracker.start(uri=uri, experiment="e", run_dir=tmp_path / "run", run_name="r", tags={})
    first.log_datasets(synthetic)
    again = RunTracker.start(uri=uri, experiment="e", run_dir=tmp_path / "run", run_name="r", tags={},
                             run_id=first.run_id)
    again.log_datasets(synthetic)
    run = MlflowClient(uri).get_run(first.run_id)
    assert len(run.inputs.dataset_inputs) == 2
    assert {c: (d.name, json.loads(d.source)["uri"], d.digest) for c, d in _inputs(run).items()} == synthetic


@pytest.mark.slow
def test_training_run_records_name_tags_masked_uri_system_metrics_and_datasets(mlflow_server, train_env, tmp_path):
    """One SMOKE run on the real server with a password in its URI, system metrics sampled every second; a
    second one (SQLite store) with tracking.system_metrics=false on other data."""
    env = {**train_env, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    off_args = _smoke(**{"dataset.num_train": 12, "tracking.system_metrics": "false",
                         "hydra.run.dir": tmp_path / "off"})
    uri = mlflow_server.url.replace("://", "://user:s3cret@")
    # a process of its own: its whole console (MLflow's own loggers included) is checked for the password
    proc = subprocess.Popen([sys.executable, "-m", "date.train", *SMOKE, "optim.lr=1e-3", f"tracking.uri={uri}",
                             "tracking.log_model=true", "tracking.experiment=records"],  # the shared server
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    off = run_in_process("date.train", [str(a) for a in off_args], env=env, cwd=tmp_path)  # meanwhile, here
    console = "".join(proc.communicate(timeout=300))
    assert proc.returncode == 0, console[-3000:]
    assert off.returncode == 0, off.stderr[-3000:]

    client = MlflowClient(mlflow_server.url)
    (run,) = client.search_runs([client.get_experiment_by_name("records").experiment_id])
    assert run.info.run_name == \
        "dual-smoke-resnet18-s0 batch_size=4 dataset.num_train=8 dataset.num_val=4 optim.lr=1e-3"
    tags = run.data.tags  # as mlflow.start_run sets them, for `python -m date.train` in this checkout
    assert (tags["mlflow.user"], tags["mlflow.source.type"]) == (getpass.getuser(), "LOCAL")
    assert tags["mlflow.source.name"] == str(REPO / "date" / "train.py")
    assert tags["mlflow.source.git.commit"] == _git_head() and tags["assigner"] == "dual"
    # the run passed check_reachable (urllib cannot open user:password@ URLs itself); the param is masked
    assert run.data.params["tracking.uri"] == mlflow_server.url.replace("://", "://user:***@")
    assert not [v for v in run.data.params.values() if "s3cret" in v]
    # the password in no output line (the tracker's, MLflow's "View run" link, the last lines saying where things are)
    # and not in the resolved-config artifact
    assert not [line for line in console.splitlines() if "s3cret" in line]
    [resolved] = tmp_path.glob("outputs/**/config_resolved.yaml")
    assert "user:***@" in resolved.read_text() and "s3cret" not in resolved.read_text()
    # nor in any file of the run dir: Hydra's .hydra/*.yaml, the checkpoints (the logged model carries one), the log
    run_files = [p for p in resolved.parent.rglob("*") if p.is_file()]
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "last.pth", "model_final.pth"} <= \
        {str(p.relative_to(resolved.parent)) for p in run_files}
    assert not [p for p in run_files if b"s3cret" in p.read_bytes()]
    assert "user:***@" in (resolved.parent / ".hydra" / "overrides.yaml").read_text()
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics

    params = SyntheticParams(num_train=8, num_val=4)
    inputs = _inputs(run)
    assert sorted(inputs) == ["train", "val"] and {d.name for d in inputs.values()} == {"synthetic"}
    assert json.loads(inputs["train"].source)["uri"].endswith(f"{params.folder_name()}/instances_train.json")
    assert inputs["train"].digest != inputs["val"].digest

    store = MlflowClient(train_env["MLFLOW_TRACKING_URI"])
    (run_off,) = store.search_runs([store.get_experiment_by_name("date").experiment_id])
    assert run_off.info.status == "FINISHED" and "train/loss" in run_off.data.metrics
    assert not [k for k in run_off.data.metrics if k.startswith("system/")]
    # the final model: logged to the server's run (its load-back is test_logged_model.py's), not to run_off
    (model,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and model.name == "model"
    assert not store.search_logged_models(experiment_ids=[run_off.info.experiment_id])
    assert _inputs(run_off)["train"].digest != inputs["train"].digest  # 12 images, not 8


# 2 epochs x 20 iterations of batch 2, each logged: the server goes down after iteration 1 and comes back (a
# restart takes ~10 s) during the training or its final flush_until, which waits for it.
OUTAGE_ARGS = ["schedule=smoke", "schedule.max_iters=null", "dataset.num_train=40", "dataset.num_val=4",
               "batch_size=2", "num_workers=0", "log_every=1", "eval_every=1"]


def _read_lines(stream, lines: list[str], new: queue.Queue) -> None:
    for line in stream:
        lines.append(line)
        new.put(line)


def _wait_for(new: queue.Queue, pattern: str, proc: subprocess.Popen, timeout: float) -> None:
    """Block until a line of the process's output matches ``pattern`` (fails when it ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if re.search(pattern, new.get(timeout=1)):
                return
        except queue.Empty:
            assert proc.poll() is None, f"training ended (exit {proc.returncode}) before a line matched {pattern!r}"
    pytest.fail(f"no line matched {pattern!r} within {timeout} s")


@pytest.mark.slow
def test_server_outage_during_a_training_run_loses_and_duplicates_no_step(restartable_mlflow_server, train_env,
                                                                          tmp_path):
    """The real `mlflow server` stopped by its PID mid-run and restarted on its port and store (issue #12, 8)."""
    mlflow_server = restartable_mlflow_server
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "date.train", *OUTAGE_ARGS, f"tracking.uri={mlflow_server.url}",
               f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=train_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines, new = [], queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines, new), daemon=True)
    reader.start()
    try:
        _wait_for(new, r"iter: 1/40", proc, timeout=300)
        mlflow_server.stop()
        _wait_for(new, r"MLflow \(.*\) unreachable", proc, timeout=120)
        mlflow_server.start()  # same port, same store
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output[-3000:]
    assert "reachable again" in output

    train_steps = sorted(int(s) for s in re.findall(r"iter: (\d+)/40", output))
    val_steps = sorted(int(s) for s in re.findall(r"Evaluation after epoch (\d+)", output))
    assert train_steps == list(range(1, 41)) and val_steps == [1, 2]
    client = MlflowClient(mlflow_server.url)
    run = client.get_run((run_dir / tracking.RUN_ID_FILE).read_text().strip())
    assert run.info.status == "FINISHED"
    keys = [k for k in run.data.metrics if k.startswith(("train/", "val/", "diag/"))]
    assert "train/loss" in keys and "val/AP" in keys
    # the per-level diagnostics of both branches, once per epoch (hooks/level_diagnostics.py)
    assert {f"diag/{d}/{p}" for d in ("o2m_positives_per_image", "o2o_match_share") for p in LEVELS} <= set(keys)
    assert sum(run.data.metrics[f"diag/o2o_match_share/{p}"] for p in LEVELS) == pytest.approx(1.0)
    for key in keys:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == (train_steps if key.startswith("train/") else val_steps), key


_RACER = """
import sys, time
from pathlib import Path
from date.runtime.run_tracker import RunTracker
uri, root, start, n = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
inputs = {"train": ("synthetic", "/data/train.json", "d1"), "val": ("synthetic", "/data/val.json", "d2")}
for i in range(n):
    tracker = RunTracker.start(uri=uri, experiment="e", run_dir=root / str(i), run_name=str(i), tags={})
    while time.time() < start + 0.4 * i:  # both processes insert the same datasets at the same moment
        pass
    tracker.log_datasets({split: (name, src, digest + str(i)) for split, (name, src, digest) in inputs.items()})
"""


@pytest.mark.slow
def test_jobs_that_start_together_both_log_the_same_dataset(tmp_path):
    """Two jobs of a sweep log the same dataset into one store at once: MLflow's look-up-then-insert lets the
    second insert fail (UNIQUE constraint); both runs must end with their inputs."""
    uri, n = f"sqlite:///{tmp_path / 'mlflow.db'}", 8
    tracking.ensure_experiment(uri, "e")
    start = time.time() + 6  # after both have imported MLflow
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, uri, str(tmp_path / name), str(start), str(n)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("a", "b")]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert len(runs) == 2 * n
    for run in runs:
        assert {c: d.digest for c, d in _inputs(run).items()} == {"train": f"d1{run.info.run_name}",
                                                                  "val": f"d2{run.info.run_name}"}
