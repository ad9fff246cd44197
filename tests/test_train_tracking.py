"""MLflow tracking: where the store is, fast failure, buffered metrics across an outage, no duplicate steps."""
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port
from date.runtime import tracking
from date.runtime.tracking import RunTracker, TrackingError


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


def test_metrics_survive_a_server_outage(mlflow_server, tmp_path):
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
