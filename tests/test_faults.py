"""Faults and bad input end in one clear paragraph with work kept (README, "When things go wrong").

Every test drives the real ``python -m date.train`` the way a user does; the SIGKILL, preemption and
unreachable-server rows of the README's table are tested in test_train_resume.py, test_slurm.py and
test_train_cli.py.
"""
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import RESUMABLE, RESUMABLE_ITERS, SMOKE, run_in_process, run_module
from date.config import compose_config
from date.data.build import build_datasets
from date.runtime import checkpoint as ckpt
from date.runtime.run_dir_lock import RunDirBusyError, run_dir_lock

# conftest's RESUMABLE, 2 epochs x 12 iterations of batch 2 with a loader worker: long enough to be stopped
# mid-epoch; its uninterrupted run is conftest's reference_run.
LONG = RESUMABLE
TOTAL_ITERS = RESUMABLE_ITERS


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-3000:]


def _error_paragraph(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    return line


def _all_finite(path: Path) -> bool:
    return all(t.isfinite().all() for t in ckpt.load(path)["model"].values() if t.is_floating_point())


def _wait_for(predicate, proc, timeout=300.0, what="") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"the run ended before {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _train_then_signal(args: list[str], run_dir: Path, tmp_path: Path, env: dict, *, iteration: int = 0,
                       signum: int, whole_group: bool = False, while_training=None, when: str = "",
                       returncode: int | None = None) -> str:
    """Start `python -m date.train <args>`, send ``signum`` once ``iteration`` (or the text ``when``) is logged (to
    its process group, as a terminal's Ctrl-C, `timeout` or scancel send it, when ``whole_group``); return its output
    after checking its exit code (default 128 + signum)."""
    log = run_dir / "train.log"
    when = when or f"iter: {iteration}/"
    with open(tmp_path / "first.out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "date.train", *args], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=whole_group)
        try:
            _wait_for(lambda: log.exists() and when in log.read_text(), proc, what=repr(when))
            if while_training is not None:
                while_training(proc)
            os.killpg(proc.pid, signum) if whole_group else os.kill(proc.pid, signum)
            assert proc.wait(timeout=300) == (128 + signum if returncode is None else returncode), \
                (tmp_path / "first.out").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    return (tmp_path / "first.out").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("assigner", ["o2o", "dual"])
def test_diverging_poto_run_stops_with_the_message_not_a_traceback(assigner, tmp_path, train_env):
    # lr 1e8 makes the o2o predictions NaN at the second step: POTO's matching sees them before any loss
    result = run_in_process("date.train", [*SMOKE, f"assigner={assigner}", "optim.lr=1e8",
                                           "checkpoint_every_iters=1"], env=train_env, cwd=tmp_path)
    assert result.returncode == 1
    _no_traceback(result)
    message = _error_paragraph(result.stderr)
    assert "Non-finite o2o matching cost at iteration 2 (epoch 1, iteration 2/2 of the epoch)" in message
    assert "Try a lower optim.lr" in message
    for last in tmp_path.glob("outputs/**/last.pth"):  # written after iteration 1, before the NaN
        assert _all_finite(last)


@pytest.mark.slow
def test_weights_that_overflow_on_an_epochs_last_step_are_never_saved(tmp_path, train_env):
    # one iteration per epoch and an lr whose update overflows float32: the gradients are finite, the
    # weights after the epoch's last (only) step are not, and the epoch-end checkpoint must refuse them
    args = ["schedule=smoke", "dataset.num_train=4", "dataset.num_val=4", "batch_size=4", "num_workers=0",
            "assigner=o2o", "optim.lr=1e41"]
    result = run_in_process("date.train", args, env=train_env, cwd=tmp_path)
    assert result.returncode == 1
    _no_traceback(result)
    message = _error_paragraph(result.stderr)
    assert "Non-finite weights after iteration 1: 'backbone.body.conv1.weight'" in message
    assert "none had been written yet" in message
    assert not list(tmp_path.glob("outputs/**/*.pth"))


@pytest.mark.slow
@pytest.mark.parametrize("sweep,reason", [
    (["log_every=1,2"], "log_every=1,2 (left out of run-dir names)"),
    (["name=a,b", "hydra.sweep.dir=SWEEP"], "name=a,b (left out of run-dir names)"),
    (["seed=0,0"], "seed=0,0 (a value listed twice)"),
])
def test_a_sweep_whose_jobs_would_share_a_run_dir_fails_at_launch(sweep, reason, tmp_path, fresh_env):
    sweep = [s.replace("SWEEP", str(tmp_path / "sweep")) for s in sweep]
    result = run_in_process("date.train", ["-m", *sweep, *SMOKE], env=fresh_env, cwd=tmp_path)
    assert result.returncode == 2
    _no_traceback(result)
    message = _error_paragraph(result.stderr)
    assert "several jobs in one run dir and one MLflow run" in message and reason in message
    assert "Launching" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("**/last.pth")) and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_sweeping_name_keeps_jobs_apart_through_the_sweep_dir(tmp_path, fresh_env):
    # conf/config.yaml's sweep dir is multirun/${name}/...: name is left out of the job dir, yet separates jobs
    result = run_in_process("date.train", ["-m", "name=a,b", *SMOKE], env=fresh_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    finals = sorted(tmp_path.glob("multirun/*/*/*/model_final.pth"))
    assert [p.parts[-4] for p in finals] == ["a", "b"]
    client = MlflowClient(fresh_env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("date").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_a_second_process_on_a_busy_run_dir_fails_fast_naming_the_holder(tmp_path, train_env):
    run_dir = tmp_path / "run"
    args = [*SMOKE, f"hydra.run.dir={run_dir}"]
    # the lock held by another process, as a training holds it (date/runtime/run_dir_lock.py)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from date.runtime.run_dir_lock import run_dir_lock\n"
                               "with run_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
                               str(run_dir)], env=train_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_in_process("date.train", args, env=train_env, cwd=tmp_path)
        assert result.returncode == 2
        _no_traceback(result)
        message = _error_paragraph(result.stderr)
        assert f"The run dir {run_dir} is in use by another training process (pid {holder.pid} on " in message
        assert "name=<new name>" in message and not (run_dir / ckpt.LAST).exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    result = run_in_process("date.train", args, env=train_env, cwd=tmp_path)  # the lock died with its holder
    assert result.returncode == 0, result.stderr[-3000:]
    assert ckpt.load(run_dir / ckpt.LAST)["finished"]


# A holder that forks, as a training forks its DataLoader workers (they share its open files), then gets SIGKILLed.
_FORKING_HOLDER = """import os, sys, time
from pathlib import Path
from date.runtime.run_dir_lock import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print(child, flush=True)
    time.sleep(600)
"""


def test_the_lock_dies_with_its_holder_while_the_holders_forked_children_live(tmp_path, train_env):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _FORKING_HOLDER, str(run_dir)], env=train_env,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunDirBusyError, match=f"pid {holder.pid} on "):
            with run_dir_lock(run_dir):
                pass
        holder.kill()
        holder.wait(timeout=30)
        os.kill(child, 0)  # the child still lives (it would hold a flock: a resume right after the kill was refused)
        with run_dir_lock(run_dir):  # the lock died with its holder
            pass
        assert f"pid {os.getpid()} on " in (run_dir / ".lock").read_text()
    finally:
        holder.kill()
        holder.wait(timeout=30)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_sigterm_finishes_the_iteration_writes_last_pth_and_resumes_exactly(tmp_path, train_env, reference_run):
    run_dir = tmp_path / "stopped"
    args = [*LONG, f"hydra.run.dir={run_dir}"]

    def is_locked(proc):  # a training holds its run dir
        with pytest.raises(RunDirBusyError, match=f"pid {proc.pid} on "):
            with run_dir_lock(run_dir):
                pass

    output = _train_then_signal(args, run_dir, tmp_path, train_env, iteration=3, signum=signal.SIGTERM,
                                while_training=is_locked)
    saved = ckpt.load(run_dir / ckpt.LAST)
    assert 3 <= saved["global_iter"] < TOTAL_ITERS and not saved["finished"] and saved["elapsed_s"] > 0
    assert f"Checkpoint written: {run_dir / ckpt.LAST} at epoch" in output
    assert "Stopped by SIGTERM; last.pth is written. Resume with: python -m date.train " + " ".join(args) in output
    assert not (run_dir / ckpt.FINAL).exists()
    client = MlflowClient(train_env["MLFLOW_TRACKING_URI"])
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = run_in_process("date.train", args, env=train_env, cwd=tmp_path)  # the lock died with it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {run_dir / ckpt.LAST} at epoch" in resumed.stdout
    assert ckpt.load(run_dir / ckpt.LAST)["elapsed_s"] > saved["elapsed_s"]  # the whole run's time, both processes
    assert "(the whole run; " in resumed.stdout and "s since the last resume). Final metrics:" in resumed.stdout
    final = ckpt.load(run_dir / ckpt.FINAL)
    reference_final = ckpt.load(reference_run.run_dir / ckpt.FINAL)
    assert final["metrics"] == reference_final["metrics"] and "val/AP" in final["metrics"]
    assert all(torch.equal(final["model"][k], v) for k, v in reference_final["model"].items())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, TOTAL_ITERS + 1))  # each iteration once


@pytest.mark.slow
def test_ctrl_c_finishes_the_iteration_writes_last_pth_and_resumes(tmp_path, train_env):
    run_dir = tmp_path / "run"
    args = [*LONG, f"hydra.run.dir={run_dir}"]
    # its own process group, as a terminal's foreground job: Ctrl-C reaches the trainer and its loader worker
    output = _train_then_signal(args, run_dir, tmp_path, train_env, iteration=5, signum=signal.SIGINT,
                                whole_group=True)
    assert "Received SIGINT: stopping after this iteration" in output and "Traceback" not in output
    assert "Stopped by SIGINT; last.pth is written. Resume with: python -m date.train" in output
    assert 5 <= ckpt.load(run_dir / ckpt.LAST)["global_iter"] < TOTAL_ITERS
    resumed = run_in_process("date.train", args, env=train_env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ckpt.load(run_dir / ckpt.LAST)["finished"]


@pytest.mark.slow
def test_sigterm_to_the_process_group_writes_last_pth_at_that_iteration(tmp_path, train_env):
    # `timeout`, systemd, scancel and supervisors signal the whole group: the loader worker gets it too
    run_dir = tmp_path / "run"
    args = [*LONG, f"hydra.run.dir={run_dir}"]
    output = _train_then_signal(args, run_dir, tmp_path, train_env, iteration=3, signum=signal.SIGTERM,
                                whole_group=True)
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]
    assert 3 <= ckpt.load(run_dir / ckpt.LAST)["global_iter"] < TOTAL_ITERS
    assert "Stopped by SIGTERM; last.pth is written. Resume with: python -m date.train " + " ".join(args) in output
    client = MlflowClient(train_env["MLFLOW_TRACKING_URI"])
    assert client.get_run((run_dir / "mlflow_run_id").read_text().strip()).info.status == "KILLED"


@pytest.mark.slow
def test_sigterm_to_the_process_group_during_evaluation_stops_after_it(tmp_path, train_env):
    # 12 val images in batches of 2 through a loader worker: the signal lands while the evaluation loads them
    run_dir = tmp_path / "run"
    args = [*LONG, "dataset.num_val=12", f"hydra.run.dir={run_dir}"]
    output = _train_then_signal(args, run_dir, tmp_path, train_env, when="Evaluating after epoch 1",
                                signum=signal.SIGTERM, whole_group=True)
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]
    saved = ckpt.load(run_dir / ckpt.LAST)
    assert saved["global_iter"] == TOTAL_ITERS // 2 and [e["epoch"] for e in saved["eval_history"]] == [1]
    assert "Checkpoint written: " in output and "Stopped by SIGTERM; last.pth is written. Resume with:" in output


@pytest.mark.slow
def test_sigterm_to_the_process_group_during_the_final_save_lets_the_run_finish(tmp_path, train_env):
    run_dir = tmp_path / "run"
    args = [*SMOKE, "num_workers=1", f"hydra.run.dir={run_dir}"]
    output = _train_then_signal(args, run_dir, tmp_path, train_env, when="Evaluation after epoch 2",
                                signum=signal.SIGTERM, whole_group=True, returncode=0)
    assert "Traceback" not in output, output[-3000:]
    assert "The SIGTERM arrived after the last iteration: the run finished and is saved" in output
    assert ckpt.load(run_dir / ckpt.LAST)["finished"] and (run_dir / ckpt.FINAL).exists()
    client = MlflowClient(train_env["MLFLOW_TRACKING_URI"])
    assert client.get_run((run_dir / "mlflow_run_id").read_text().strip()).info.status == "FINISHED"


def _coco_json_copy(tmp_path: Path) -> list[str]:
    """A small synthetic set written out as COCO-json files + PNGs, as dataset=coco_json overrides."""
    cache = tmp_path / "cache"
    build_datasets(compose_config(["dataset.num_train=8", "dataset.num_val=4", f"dataset.cache_dir={cache}"]).dataset)
    [generated] = [p for p in (cache / "synthetic").iterdir() if p.is_dir()]
    data = tmp_path / "coco"
    shutil.copytree(generated, data)
    return ["dataset=coco_json", f"dataset.train_ann={data / 'instances_train.json'}",
            f"dataset.train_images={data}", f"dataset.val_ann={data / 'instances_val.json'}",
            f"dataset.val_images={data}", "dataset.train_short_sizes=[128]", "dataset.max_size=128",
            "dataset.test_short_size=128"]


@pytest.mark.slow
def test_a_corrupt_image_in_a_loader_worker_is_the_same_paragraph_as_without_workers(tmp_path, train_env):
    dataset = _coco_json_copy(tmp_path)
    train_json = json.loads(Path(dataset[1].split("=", 1)[1]).read_text())
    corrupt = Path(dataset[2].split("=", 1)[1]) / train_json["images"][0]["file_name"]
    corrupt.write_bytes(b"not a png")  # width/height are in the JSON: only loading the pixels finds it
    messages = []
    for workers in (0, 2):
        run = run_module if workers else run_in_process  # loader workers are forked from a process of its own
        result = run("date.train", [*dataset, "schedule=smoke", "batch_size=8", f"num_workers={workers}",
                                    f"name=w{workers}"], env=train_env, cwd=tmp_path)
        assert result.returncode == 2
        _no_traceback(result)
        messages.append(_error_paragraph(result.stderr))
    assert messages[0] == messages[1], messages
    assert messages[0].startswith(f"Error: Cannot read image file {corrupt}: ")
    assert "DataLoader worker" not in messages[1]


def _limit_file_size(limit: int):
    def preexec():  # the child's file-size limit (ulimit -f); Python ignores SIGXFSZ, so writes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_fails_the_mlflow_run(tmp_path, train_env):
    args = [*SMOKE, f"hydra.run.dir={tmp_path / 'run'}"]
    first = run_in_process("date.train", args, env=train_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "run" / ckpt.LAST
    before = hashlib.sha256(last.read_bytes()).hexdigest()

    # start over in the same dir with files limited to 20 MB: the logs, the MLflow store and the eval files
    # fit; last.pth (weights + AdamW state, ~140 MB) does not
    limit = 20 * 2**20
    assert last.stat().st_size > limit
    second = subprocess.run([sys.executable, "-m", "date.train", *args, "resume=false"], cwd=tmp_path, env=train_env,
                            capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(limit))
    assert second.returncode == 1
    _no_traceback(second)
    message = _error_paragraph(second.stderr)
    assert f"Could not write {last}: File too large (" in message and "GiB free on its file system" in message
    assert "That file is unchanged (the previous one is intact)" in message
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no half-written temporary left behind
    client = MlflowClient(train_env["MLFLOW_TRACKING_URI"])
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "eval_results.json"
    ckpt.write_atomic(path, '{"AP": 0.5}')

    def half_then_full(f):
        f.write(b'{"AP": 0.')
        raise OSError(28, "No space left on device")

    with pytest.raises(ckpt.SaveError, match="No space left on device"):
        ckpt.write_atomic(path, half_then_full)
    assert path.read_text() == '{"AP": 0.5}' and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.slow
def test_a_refused_config_leaves_no_outputs_dir(tmp_path, train_env):
    result = run_in_process("date.train", ["schedule.epochs=-1"], env=train_env, cwd=tmp_path)
    assert result.returncode == 2 and "schedule.epochs=-1" in result.stderr
    assert not (tmp_path / "outputs").exists()
    kept = tmp_path / "outputs" / "date" / "schedule.epochs--1"  # its run dir
    kept.mkdir(parents=True)
    (kept / "last.pth").write_bytes(b"an earlier run's")
    result = run_in_process("date.train", ["schedule.epochs=-1"], env=train_env, cwd=tmp_path)
    assert result.returncode == 2 and (kept / "last.pth").read_bytes() == b"an earlier run's"
