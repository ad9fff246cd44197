"""Training entrypoint: ``python -m date.train [group=option ...] [key=value ...]`` (``-m`` to sweep).

Order of work: compose and check (the config, the MLflow store, the datasets; then the MLflow run starts),
build (the detector, its criterion, the trainer), fit (date/training/), report. Bad input ends with a
one-paragraph message on stderr and exit code 2 (set HYDRA_FULL_ERROR=1 for the full traceback); a NaN/Inf
loss ends with exit code 1.

The run directory is deterministic (conf/config.yaml, hydra.run.dir): re-running the same command
resumes from ``<run dir>/last.pth`` and continues the same MLflow run.
"""
from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from date import cli
from date.cli import Entrypoint
from date.config import ConfigError, TrainConfig, flatten, resolved_config, resume_mismatches, validate
from date.data.build import GENERATED, build_datasets, check_dataset_paths, synthetic_params
from date.errors import INPUT_ERRORS
from date.modeling.backbone import check_weights
from date.modeling.build import build_criterion, build_detector
from date.runtime import checkpoint as ckpt
from date.runtime.checkpoint import seed_everything
from date.runtime.distributed import barrier, cleanup, env_info, init_distributed, resolve_device
from date.runtime.logs import errors_as_messages, job_log_file, log_to_rank_file, quiet_third_party
from date.runtime.outputs import check_writable
from date.runtime.preemption import checkpoint_on_signal
from date.runtime.run_dir_lock import LOCK_FILE, run_dir_lock
from date.runtime.run_tracker import NullTracker, RunTracker
from date.runtime.tracking import (GROUP_TAGS, RUN_ID_FILE, check_reachable, dataset_inputs, git_commit,
                                   mask_credentials, mlflow_run_name, read_or_create_sweep_id, resolve_uri)
from date.training.hooks.final_model import FIGURE
from date.training.hooks.metrics_flush import FINAL_FLUSH_S
from date.training.non_finite import NonFiniteLossError
from date.training.trainer import RunContext, Trainer

log = logging.getLogger("date.train")


def _sweep_id(hc) -> str:
    """Same for every job of one multirun (file written by date.runtime.tracking.SweepCallback); a single run
    gets its own."""
    if hc.mode == RunMode.MULTIRUN:
        return read_or_create_sweep_id(Path(hc.sweep.dir))
    return uuid.uuid4().hex[:12]


class _Job(NamedTuple):
    """What :func:`_prepare` found: everything checked, the MLflow run started."""

    device: torch.device
    resolved: dict
    resume_from: Optional[dict]
    datasets: Optional[tuple]  # (train, val); None for a finished run
    tracker: RunTracker | NullTracker  # rank 0's MLflow run; a NullTracker on the other ranks


def run(cfg: DictConfig) -> dict[str, float]:
    """Train with the composed config ``cfg``; returns the final metrics. Input refused before the MLflow run starts
    leaves no run dir behind (the one Hydra created for it is removed)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    dist_info = env_info()
    refused = False
    try:
        with run_dir_lock(run_dir) if dist_info.is_main else contextlib.nullcontext():
            try:
                job = _prepare(cfg, hc, run_dir, dist_info)
            except INPUT_ERRORS:
                refused = True
                raise
            return _run_job(cfg, hc, run_dir, dist_info, job)
    finally:
        if refused and dist_info.is_main:
            _remove_unused_run_dir(run_dir, hc)


def _prepare(cfg: DictConfig, hc, run_dir: Path, dist_info) -> _Job:
    """Check the config, the device, the checkpoint to resume, the MLflow store and the datasets; then start the
    MLflow run (rank 0). Bad input raises one of INPUT_ERRORS before the MLflow run exists."""
    validate(cfg)
    device = resolve_device(cfg.device, local_rank=dist_info.local_rank)
    init_distributed(device=device)
    log_to_rank_file(dist_info.rank)
    resolved = resolved_config(cfg)
    log.info("Run dir: %s", run_dir)
    if dist_info.is_main:
        _mask_passwords(hc, run_dir)
    if dist_info.world_size > 1:
        log.info("DDP: rank %d of world size %d (local rank %d), %s backend, device %s", dist_info.rank,
                 dist_info.world_size, dist_info.local_rank, torch.distributed.get_backend(), device)
    resume_from = _checkpoint_to_resume(cfg, run_dir, resolved)
    finished = resume_from is not None and resume_from.get("finished")
    uri = resolve_uri(cfg.tracking.uri)
    if dist_info.is_main:
        check_reachable(uri)  # fail fast, before datasets and model
    datasets = None
    if not finished:
        datasets = _datasets(cfg, dist_info)
        check_batch_size(len(datasets[0]), cfg.batch_size, dist_info.world_size)
    tracker = _start_tracker(cfg, hc, uri, run_dir, resume_from) if dist_info.is_main else NullTracker()
    return _Job(device, resolved, resume_from, datasets, tracker)


def _run_job(cfg: DictConfig, hc, run_dir: Path, dist_info, job: _Job) -> dict[str, float]:
    """Build and fit (a finished run: nothing to train), then report; a training that raises leaves its MLflow run
    FAILED (KILLED when stopped)."""
    # SLURM preemption / time limit: save, requeue, resume; SIGTERM / Ctrl-C elsewhere: save, say how to resume.
    # Deferred until the end of the run: a signal after the last iteration lets the run finish its final files.
    with checkpoint_on_signal(_resume_command(hc)) as preemption:
        try:
            if job.datasets is None:
                metrics = _finished_metrics(job.tracker, run_dir, job.resume_from)
            else:
                trainer = _build(cfg, run_dir, dist_info, job, preemption)
                metrics = trainer.fit()
        except BaseException as exc:
            job.tracker.flush_until(10.0)
            if dist_info.is_main:  # rank 0 holds the run's files and its MLflow run
                killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
                _finish(job.tracker, run_dir, job.resolved, status="KILLED" if killed else "FAILED")
            raise
        if dist_info.is_main:
            _report(cfg, job, run_dir)
        return metrics


def check_batch_size(num_images: int, batch_size: int, world_size: int) -> None:
    """One training step needs batch_size images per process (the last incomplete batch of an epoch is dropped)."""
    if num_images // world_size < batch_size:
        per = f" per process with {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"batch_size={batch_size}: the training split has {num_images} images, fewer than one step "
                          f"needs ({batch_size}{per}). Lower batch_size (at most {num_images // world_size}) or use a "
                          "larger training split (dataset.num_train for the synthetic one).")


def check_run(configs: Sequence[DictConfig], multirun: bool) -> None:
    """What each job of the command would find wrong before its first step, checked by date.cli before Hydra creates
    the run (or sweep) dir: that dir's place, the device (where the jobs run here), the backbone weights, the
    dataset (the synthetic set's size against batch_size; other sets' paths) and the MLflow store."""
    first = configs[0]
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    check_writable(Path(str(OmegaConf.select(first, key))), f"{key}={OmegaConf.select(first, key)}")
    launcher = OmegaConf.select(first, "hydra.launcher", default={}) or {}
    on_slurm = "slurm" in str(launcher.get("_target_", "")).lower()
    world_size = (launcher.get("tasks_per_node") or 1) * (launcher.get("nodes") or 1) if on_slurm \
        else env_info().world_size
    done: set = set()
    for cfg in configs:
        if not on_slurm:  # SLURM's jobs run on other machines: their devices are not this one's
            resolve_device(cfg.device, local_rank=env_info().local_rank)
        for check, *args in ((check_weights, cfg.backbone.depth, cfg.backbone.weights),
                             (check_reachable, resolve_uri(cfg.tracking.uri))):
            if (check, *args) not in done:  # a sweep's jobs mostly share them: each loaded or probed once
                done.add((check, *args))
                check(*args)
        if cfg.dataset.kind in GENERATED:
            synthetic_params(cfg.dataset)  # its own range checks (DatasetError)
            check_batch_size(cfg.dataset.num_train, cfg.batch_size, world_size)
        else:
            check_dataset_paths(cfg.dataset)


def _log_model(tracker: RunTracker, run_dir: Path, val_set) -> None:
    """The final detector as an MLflow model of the run; a failure is logged (the training is done)."""
    from date.runtime.logged_model import log_detector  # imports mlflow.pyfunc and pandas: only at the end

    try:
        uri = log_detector(tracking_uri=tracker.uri, run_id=tracker.run_id, checkpoint=run_dir / ckpt.FINAL,
                           label_to_category_id=val_set.label_to_category_id)
    except Exception as exc:
        log.warning("Could not log the final model to MLflow run %s: %s: %s", tracker.run_id, type(exc).__name__,
                    exc)
        return
    log.info("MLflow model %s: mlflow.pyfunc.load_model('runs:/%s/model').predict(images)", uri, tracker.run_id)


def _report(cfg, job: _Job, run_dir: Path) -> None:
    """Rank 0, after the training: the final model as an MLflow model (tracking.log_model), the MLflow run closed,
    and where its MLflow run, checkpoint and convergence figure are. A run found finished only closes its MLflow run
    again (its model was logged when it finished)."""
    if job.datasets is None:
        _finish(job.tracker, run_dir, job.resolved)
        return
    if cfg.tracking.log_model:
        _log_model(job.tracker, run_dir, job.datasets[1])
    _finish(job.tracker, run_dir, job.resolved)
    log.info("MLflow run %s (experiment %r) in %s; browse with: mlflow ui --backend-store-uri %s", job.tracker.run_id,
             cfg.tracking.experiment, job.tracker.display_uri, job.tracker.display_uri)
    log.info("Checkpoint: %s (python -m date.evaluate checkpoint=%s)", run_dir / ckpt.FINAL, run_dir / ckpt.FINAL)
    log.info("Convergence figure: %s", run_dir / FIGURE)


def _remove_unused_run_dir(run_dir: Path, hc) -> None:
    """Input refused before anything ran leaves no outputs/... dir behind: remove the run dir Hydra made for it
    (its .hydra/, log and lock) and the empty folders above it, up to the launch directory's outputs/."""
    if hc.mode == RunMode.MULTIRUN or not run_dir.is_dir():
        return
    if not {p.name for p in run_dir.iterdir()} <= {hc.output_subdir, f"{hc.job.name}.log", LOCK_FILE}:
        return  # an earlier run's files: keep everything
    shutil.rmtree(run_dir, ignore_errors=True)
    outputs = Path.cwd() / "outputs"
    for parent in run_dir.absolute().parents:
        if parent == outputs.parent or outputs not in (parent, *parent.parents):
            break
        with contextlib.suppress(OSError):
            parent.rmdir()  # only if empty


def _resume_command(hc) -> str:
    """The command that continues this run where it stops: the same command line (a sweep: with its sweep dir)."""
    args = sys.argv[1:]
    if hc.mode == RunMode.MULTIRUN and not any(a.startswith("hydra.sweep.dir=") for a in args):
        args = [*args, f"hydra.sweep.dir={Path(hc.sweep.dir).absolute()}"]
    return " ".join(["python -m date.train", *(shlex.quote(a) for a in args)])


def _mask_passwords(hc, run_dir: Path) -> None:
    """Hydra's own copies of the config and the overrides (<run dir>/.hydra/*.yaml, a sweep's multirun.yaml) hold a
    tracking.uri given with user:password@ in clear text; rewrite them masked, as everything this suite writes is.
    (Jobs of one sweep may do it at once: each write is an atomic replace with the same text.)"""
    files = sorted((run_dir / hc.output_subdir).glob("*.yaml")) if hc.output_subdir is not None else []
    if hc.mode == RunMode.MULTIRUN:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    for path in files:
        text = path.read_text() if path.exists() else ""
        if (masked := mask_credentials(text)) != text:
            ckpt.write_atomic(path, masked)


def _checkpoint_to_resume(cfg, run_dir: Path, resolved: dict) -> dict | None:
    """The run dir's last.pth when resuming, after checking that it was written with this config."""
    if not (cfg.resume and (run_dir / ckpt.LAST).exists()):
        return None
    saved = ckpt.load(run_dir / ckpt.LAST)
    mismatches = resume_mismatches(saved.get("config", {}), resolved)
    if mismatches:
        raise ConfigError(
            f"{run_dir / ckpt.LAST} was written with another config ({'; '.join(mismatches)}), so this run "
            "cannot resume from it. Pass resume=false to start over in that directory, or name=<new name> "
            "for a new one.")
    return saved


def _start_tracker(cfg, hc, uri: str, run_dir: Path, resume_from: dict | None) -> RunTracker:
    """The job's MLflow run: the checkpoint's (or the one a killed start recorded), else a new one."""
    run_id = None
    if resume_from is not None:
        run_id = resume_from.get("mlflow_run_id")
    elif cfg.resume and (run_dir / RUN_ID_FILE).exists():  # killed before its first checkpoint
        run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    tags = {group: str(hc.runtime.choices.get(group)) for group in GROUP_TAGS}
    tags.update(seed=str(cfg.seed), sweep_id=_sweep_id(hc), git_commit=git_commit(), run_dir=str(run_dir.absolute()))
    name = mlflow_run_name(hc.runtime.choices, cfg.seed, hc.overrides.task,
                           exclude=hc.job.config.override_dirname.exclude_keys)
    return RunTracker.start(uri=uri, experiment=cfg.tracking.experiment, run_dir=run_dir, run_name=name, tags=tags,
                            run_id=run_id, system_metrics=cfg.tracking.system_metrics)


def _finished_metrics(tracker: RunTracker | NullTracker, run_dir: Path, saved: dict) -> dict[str, float]:
    """A run found finished: its final metrics, and the metrics it could not send then sent now."""
    log.info("The run in %s has already finished (%s); nothing to train (resume=false trains it again).",
             run_dir, "  ".join(f"{k} {v:.4f}" for k, v in saved.get("metrics", {}).items()))
    tracker.restore_pending(saved.get("pending_metrics", []))
    tracker.flush_until(FINAL_FLUSH_S)
    return dict(saved.get("metrics", {}))


def _datasets(cfg, dist_info):
    """(train, val), validated; rank 0 first, as the synthetic set is generated into a shared cache."""
    if not dist_info.is_main:
        barrier()
    train_set, val_set = build_datasets(cfg.dataset, augmentation=cfg.schedule.augmentation)
    if dist_info.is_main:
        barrier()
    log.info("Datasets: %d train / %d val images, %d classes", len(train_set), len(val_set), train_set.num_classes)
    return train_set, val_set


def _build(cfg, run_dir: Path, dist_info, job: _Job, preemption) -> Trainer:
    """The run's params and datasets into its MLflow run, then the seeded detector, its criterion and the trainer
    (resumed from the checkpoint, if any)."""
    train_set, val_set = job.datasets
    job.tracker.log_params(flatten(job.resolved))
    job.tracker.log_datasets(dataset_inputs(cfg.dataset, HydraConfig.get().runtime.choices.get("dataset"),
                                            {"train": train_set.ann_file, "val": val_set.ann_file}))
    seed_everything(cfg.seed + dist_info.rank)
    model = build_detector(cfg, num_classes=train_set.num_classes)
    log.info("Model: ResNet-%d FPN, assigner %s (o2m rule %s), %.2f M trainable parameters", cfg.backbone.depth,
             cfg.assigner.mode, cfg.assigner.o2m,
             sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)
    run = RunContext(run_dir, job.device, dist_info, job.tracker, preemption)
    trainer = Trainer(cfg, model=model, criterion=build_criterion(cfg), datasets=job.datasets, run=run)
    if job.resume_from is not None:
        trainer.resume(job.resume_from)
    return trainer


def _finish(tracker: RunTracker | NullTracker, run_dir: Path, resolved: dict, status: str = "FINISHED") -> None:
    """Upload the resolved config, the eval results and the job log; close the MLflow run."""
    try:
        ckpt.write_atomic(run_dir / "config_resolved.yaml", mask_credentials(OmegaConf.to_yaml(resolved)))
        tracker.log_artifact(run_dir / "config_resolved.yaml")
    except ckpt.SaveError as exc:  # a full disk must not keep the MLflow run from being closed
        log.warning("%s", exc)
    for name in ("eval_results.json", FIGURE):
        if (run_dir / name).exists():
            tracker.log_artifact(run_dir / name)
    if (log_file := job_log_file()) is not None and log_file.exists():
        tracker.log_artifact(log_file)
    tracker.set_terminated(status)


def _exit_on_sigterm() -> None:
    """SIGTERM (scancel, torchrun stopping its workers) -> SystemExit, so the MLflow run is flushed and
    marked KILLED; last.pth is untouched. Left alone when someone (submitit) already handles SIGTERM."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    quiet_third_party()
    _exit_on_sigterm()
    try:
        with errors_as_messages({**dict.fromkeys(INPUT_ERRORS, 2), NonFiniteLossError: 1, ckpt.SaveError: 1}):
            return run(cfg)
    finally:
        cleanup()



ENTRYPOINT = Entrypoint(
    module="date.train", config_name="config", schema=TrainConfig, check_config=validate, check_run=check_run,
    usage="python -m date.train [group=option ...] [key=value ...]  (-m: a sweep, key=a,b; --cfg job: print)",
    about="Trains DATE (or the FCOS / POTO baseline: assigner=o2m / o2o) with the composed config, evaluates it "
          "with COCOeval and logs it to MLflow. The run dir is outputs/<name>/<the overrides>: rerunning the same "
          "command resumes it. Bad input is one `Error:` paragraph with exit code 2, before anything is created.",
    help_groups=("backbone", "assigner", "schedule", "branch_weighting", "dataset", "experiment"))


if __name__ == "__main__":
    cli.main(ENTRYPOINT, main)
