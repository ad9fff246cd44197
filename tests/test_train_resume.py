"""Kill test: SIGKILL a CPU run after its first checkpoint, rerun the same command, compare with a clean run
(conftest's reference_run: the same config without the periodic checkpoints, which change no number)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RESUMABLE, RESUMABLE_ITERS, run_in_process
from date.runtime import checkpoint as ckpt

# conftest's RESUMABLE (2 epochs x 12 iterations of batch 2), a checkpoint every 3 iterations (mid-epoch) and at
# epoch ends.
ARGS = [*RESUMABLE, "checkpoint_every_iters=3"]
TOTAL_ITERS = RESUMABLE_ITERS


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, train_env, reference_run):
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "date.train", *ARGS, f"hydra.run.dir={run_dir}"]
    with open(tmp_path / "first.out", "w") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=train_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            # kill once the first checkpoint exists and one more iteration has been logged (and sent to
            # MLflow), so the resumed run has to skip metrics the killed one already logged
            while time.monotonic() < deadline and proc.poll() is None:
                log = run_dir / "train.log"
                if (run_dir / ckpt.LAST).exists() and log.exists() and "iter: 4/" in log.read_text():
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "ended before the kill:\n" + (tmp_path / "first.out").read_text()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not (run_dir / ckpt.FINAL).exists()
    killed_at = ckpt.load(run_dir / ckpt.LAST)["global_iter"]
    assert 3 <= killed_at < TOTAL_ITERS

    resumed = run_in_process("date.train", command[3:], env=train_env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {run_dir / ckpt.LAST} at epoch" in resumed.stdout
    assert "Continuing MLflow run" in resumed.stdout

    final = ckpt.load(run_dir / ckpt.FINAL)["metrics"]
    assert final == ckpt.load(reference_run.run_dir / ckpt.FINAL)["metrics"] and "val/AP" in final

    client = MlflowClient(train_env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("date").experiment_id])
    by_name = {}
    for run in runs:
        by_name.setdefault(Path(run.data.tags["run_dir"]).name, []).append(run)  # the run name says what ran
    assert sorted(by_name) == ["killed"] and len(by_name["killed"]) == 1  # one run, continued
    run = by_name["killed"][0]
    ref_client = MlflowClient(reference_run.tracking_uri)  # the reference's own store
    ref = ref_client.get_run(reference_run.run_id)
    assert Path(ref.data.tags["run_dir"]) == reference_run.run_dir
    assert run.info.status == "FINISHED"
    assert run.info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
    for key in ("train/loss", "train/o2o/cls", "train/lr", "val/AP", "val/AP50"):
        history = _history(client, run.info.run_id, key)
        steps = [s for s, _ in history]
        assert steps == (list(range(1, TOTAL_ITERS + 1)) if key.startswith("train/") else [1, 2]), (key, steps)
        assert history == _history(ref_client, ref.info.run_id, key), key  # same values as the clean run
    steps = [s for s, _ in _history(client, run.info.run_id, "train/img_per_s")]
    assert steps == list(range(1, TOTAL_ITERS + 1))
