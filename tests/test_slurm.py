"""Sweeps on the real local SLURM cluster (tests/slurm/start.sh): one job array per sweep, DDP across
the tasks of one job, preemption -> checkpoint -> requeue -> resume, and a sweep with a failing job.

Each test launches `python -m date.train -m hydra/launcher=slurm ...` as a user would and checks what
SLURM (sacct), the run directories and MLflow hold afterwards.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RESUMABLE, RESUMABLE_ITERS, SLURM_CPU, SMOKE, run_in_process, run_module
from date.runtime import checkpoint as ckpt

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster"),
              pytest.mark.xdist_group("slurm")]  # one worker: the local cluster is one small node


def _array_id(sweep_dir: Path) -> str:
    """The SLURM job (array) id of a sweep, from submitit's folders (<id> or <id>_<index>)."""
    ids = {p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and p.name[0].isdigit()}
    assert len(ids) == 1, ids
    return ids.pop()


def _sacct(job_id: str, *, want: int, allocations_only: bool = True) -> list[list[str]]:
    """sacct rows (JobID, Partition, State) of ``job_id``; waits until ``want`` jobs are listed and the latest
    record of every job and step is final (the job can still be finishing its batch step when the launcher,
    which watches submitit's result file, returns)."""
    args = ["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,Partition,State"] + (["-X"] if allocations_only else ["-D"])
    rows = []
    for _ in range(60):
        out = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        latest = {r[0]: r[2] for r in rows}  # -D lists a requeued job's earlier records first
        jobs = {name for name in latest if "." not in name}
        if len(jobs) >= want and not any(s in ("PENDING", "RUNNING", "REQUEUED") for s in latest.values()):
            break
        time.sleep(1)
    print(f"$ {' '.join(args)}\n" + "\n".join(" ".join(r) for r in rows))
    return rows


def _runs(uri: str):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name("date").experiment_id])


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_sweep_is_one_job_array_with_one_mlflow_run_per_job(tmp_path, fresh_env):
    sweep = tmp_path / "sweep"
    result = run_module("date.train", ["-m", *SLURM_CPU, "assigner=o2o,dual", *SMOKE, f"hydra.sweep.dir={sweep}"],
                        env=fresh_env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Sweep finished: 2 of 2 jobs completed. Results in {sweep}" in result.stdout  # Hydra's log
    assert result.stdout.count("  COMPLETED  #") == 2

    array = _array_id(sweep)
    rows = _sacct(array, want=2)
    assert sorted(r[0] for r in rows) == [f"{array}_0", f"{array}_1"]  # one array, two tasks
    assert all(r[1] == "debug" and r[2] == "COMPLETED" for r in rows), rows

    client, runs = _runs(fresh_env["MLFLOW_TRACKING_URI"])
    assert sorted(r.data.tags["assigner"] for r in runs) == ["dual", "o2o"]
    assert {r.data.tags["sweep_id"] for r in runs} == {(sweep / "sweep_id").read_text().strip()}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [s for s, _ in _history(client, run.info.run_id, "val/AP")] == [1, 2]


def test_two_tasks_train_one_ddp_run_with_identical_weights(tmp_path, fresh_env):
    sweep = tmp_path / "sweep"
    smoke = [a for a in SMOKE if not a.startswith("batch_size=")]
    result = run_module("date.train", ["-m", *SLURM_CPU, "hydra.launcher.tasks_per_node=2", *smoke, "batch_size=2",
                                       f"hydra.sweep.dir={sweep}"], env=fresh_env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    logs = {0: (run_dir / "train.log").read_text(), 1: (run_dir / "train_rank1.log").read_text()}
    for rank, text in logs.items():
        assert f"DDP: rank {rank} of world size 2 (local rank {rank}), gloo backend" in text
        assert "4 images per step" in text
    assert "Evaluation after epoch 2" in logs[0] and "Evaluation" not in logs[1]  # rank 0 alone evaluates
    checksums = {rank: re.search(rf"Weights checksum of rank {rank} of 2: (\w+)", text).group(1)
                 for rank, text in logs.items()}
    assert checksums[0] == checksums[1], checksums  # gradients were averaged: the replicas did not drift
    assert f"Weights identical on all 2 ranks (checksum {checksums[0]})" in logs[0]
    assert len(list(run_dir.glob("*.pth"))) == 2  # last.pth + model_final.pth, written by rank 0

    client, runs = _runs(fresh_env["MLFLOW_TRACKING_URI"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [s for s, _ in _history(client, runs[0].info.run_id, "val/AP")] == [1, 2]


# conftest's RESUMABLE, 2 epochs x 12 iterations of batch 2 on one job that fills the node's two cores (so that a
# debug job preempts it); the signal comes a few iterations in. One loader worker, as the default config has: SLURM
# signals the job's processes, and the worker must live on until the checkpoint is written. The uninterrupted run
# is conftest's reference_run (a plain local run with its own MLflow store).
PREEMPT = RESUMABLE
PREEMPT_ITERS = RESUMABLE_ITERS


def test_preempted_job_checkpoints_requeues_and_matches_an_uninterrupted_run(tmp_path, fresh_env, reference_run):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "date.train", "-m", *SLURM_CPU, "hydra.launcher.partition=lowprio",
               "hydra.launcher.cpus_per_task=2", *PREEMPT, f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "sweep.out", "w") as out:
        launcher = subprocess.Popen(command, cwd=tmp_path, env=fresh_env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            log = None
            while time.monotonic() < deadline and launcher.poll() is None:
                log = next(sweep.glob("*/train.log"), None)
                if log is not None and "iter: 2/" in log.read_text():
                    break
                time.sleep(0.2)
            assert log is not None and launcher.poll() is None, (tmp_path / "sweep.out").read_text()[-3000:]
            # a job of the high-priority partition that needs the whole node: lowprio gets USR2, then requeue
            subprocess.run(["sbatch", "-p", "debug", "-c", "2", "--mem=200M", "-o", str(tmp_path / "debug.out"),
                            "--wrap", "sleep 2"], check=True, capture_output=True, timeout=30)
            launcher.wait(timeout=300)
        finally:
            if launcher.poll() is None:
                launcher.kill()
    output = (tmp_path / "sweep.out").read_text()
    assert launcher.returncode == 0, output[-3000:]

    text = log.read_text()
    assert "Received SIGUSR2 (preemption or time limit)" in text
    saved = re.search(r"Checkpoint written for requeueing: .* at epoch (\d+) iter (\d+) \(global iteration (\d+)/",
                      text)
    assert saved, text[-3000:]
    epoch, it, global_iter = map(int, saved.groups())
    assert 2 <= global_iter < PREEMPT_ITERS  # mid-training, at an iteration boundary
    resumed = f"Resuming from {log.parent / ckpt.LAST} at epoch {epoch} iter {it} (global iteration {global_iter}/"
    assert resumed in text and "Continuing MLflow run" in text
    assert "differ from those already logged" not in text  # params re-logged with the same values only

    array = _array_id(sweep)
    states = [r[2] for r in _sacct(array, want=1, allocations_only=False) if r[0] == array]
    assert states == ["REQUEUED", "COMPLETED"], states  # preempted once, then finished in the same job

    final = ckpt.load(log.parent / ckpt.FINAL)["metrics"]
    assert final == ckpt.load(reference_run.run_dir / ckpt.FINAL)["metrics"] and "val/AP" in final

    client, runs = _runs(fresh_env["MLFLOW_TRACKING_URI"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run, continued after the requeue
    ref_client, (ref_run,) = _runs(reference_run.tracking_uri)
    for key in ("train/loss", "train/lr", "val/AP"):
        history = _history(client, runs[0].info.run_id, key)
        steps = [s for s, _ in history]
        assert steps == (list(range(1, PREEMPT_ITERS + 1)) if key.startswith("train/") else [1, 2]), (key, steps)
        assert history == _history(ref_client, ref_run.info.run_id, key), key


def test_a_failing_job_is_named_with_its_log_and_the_others_are_kept(tmp_path, fresh_env):
    sweep = tmp_path / "sweep"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.json").write_text("{not json")  # exists (the launch check passes), only the job reads it
    (broken / "val.json").write_text("{not json")
    bad = [f"dataset.train_ann={broken / 'train.json'}", f"dataset.train_images={broken}",
           f"dataset.val_ann={broken / 'val.json'}", f"dataset.val_images={broken}"]
    # dataset=synthetic ignores the coco_json paths; dataset=coco_json fails on them when its job reads them
    result = run_module("date.train", ["-m", *SLURM_CPU, "dataset=synthetic,coco_json", *bad, *SMOKE,
                                       f"hydra.sweep.dir={sweep}"], env=fresh_env, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    array = _array_id(sweep)
    err_log = sweep / ".submitit" / f"{array}_1" / f"{array}_1_0_log.err"
    assert err_log.exists()
    assert "Sweep finished: 1 of 2 jobs completed" in result.stdout and "  FAILED     #1 dataset=coco_json" in result.stdout
    assert "1 of 2 jobs of the sweep failed (the others' results are kept)" in result.stderr
    failed_line = next(line for line in result.stderr.splitlines() if line.startswith("  #1 dataset=coco_json"))
    assert f"(job {array}_1)" in failed_line and f"(log: {err_log})" in failed_line
    assert str(broken) in failed_line  # the job's own error message, naming the bad file
    assert "Traceback" not in result.stderr

    rows = {r[0]: r[2] for r in _sacct(array, want=2)}
    assert rows == {f"{array}_0": "COMPLETED", f"{array}_1": "FAILED"}, rows
    client, runs = _runs(fresh_env["MLFLOW_TRACKING_URI"])
    assert [(r.data.tags["dataset"], r.info.status) for r in runs] == [("synthetic", "FINISHED")]
    (finished,) = sweep.glob(f"*/{ckpt.FINAL}")  # the synthetic job's results are complete
    assert "- dataset=synthetic" in (finished.parent / ".hydra" / "overrides.yaml").read_text()


def test_sbatch_refusing_the_gpus_is_one_paragraph_naming_the_launcher_key(tmp_path, fresh_env):
    # the launcher's default gpus_per_node (one GPU per task) on this cluster, which has no GPU gres
    sweep = tmp_path / "sweep"
    gpus = [a for a in SLURM_CPU if not a.startswith("hydra.launcher.gpus_per_node=")]
    result = run_in_process("date.train", ["-m", *gpus, *SMOKE, f"hydra.sweep.dir={sweep}"], env=fresh_env,
                            cwd=tmp_path)  # nothing reaches a job: the launcher's process is not under test
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr[result.stderr.index("sbatch refused"):]
    assert "sbatch: error: Invalid generic resource (gres) specification" in message  # sbatch's own words
    assert "hydra.launcher.gpus_per_node=null" in message and "nothing was submitted" in message
    assert not sweep.exists()  # a refused sweep leaves no sweep dir (and so no <job id> folder: no job)
