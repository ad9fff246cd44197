"""Training entrypoint: ``python -m date.train [group=option ...] [key=value ...]`` (``-m`` to sweep).

Order of work: validate the config, probe the MLflow store, validate the datasets, then build the
model and train. Bad input ends with a one-paragraph message on stderr and exit code 2 (set
HYDRA_FULL_ERROR=1 for the full traceback); a NaN/Inf loss ends with exit code 1.

The run directory is deterministic (conf/config.yaml, hydra.run.dir): re-running the same command
resumes from ``<run dir>/last.pth`` and continues the same MLflow run.
"""
from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import uuid
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from date import checkpoint as ckpt
from date import engine
from date.branch_weighting import BranchWeighting
from date.config import (ConfigError, amp_setting, branch_weighting_kwargs, flatten, resume_mismatches,
                         validate)
from date.data.build import build_datasets
from date.data.errors import DatasetError
from date.distributed import barrier, cleanup, env_info, init_distributed
from date.logging_utils import errors_as_messages, job_log_file, log_to_rank_file
from date.modeling.backbone import BackboneWeightsError
from date.modeling.build import build_detector
from date.preemption import checkpoint_on_signal
from date.tracking import (GROUP_TAGS, RUN_ID_FILE, RunTracker, TrackingError, check_reachable, git_commit,
                           read_or_create_sweep_id, resolve_uri)

log = logging.getLogger("date.train")

# Errors caused by the user's input: reported as a message, exit code 2.
INPUT_ERRORS = (ConfigError, DatasetError, TrackingError, ckpt.CheckpointError, BackboneWeightsError)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): the model init and anything else drawn in-process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sweep_id(hc) -> str:
    """Same for every job of one multirun (file written by date.tracking.SweepCallback); a single run
    gets its own."""
    if hc.mode == RunMode.MULTIRUN:
        return read_or_create_sweep_id(Path(hc.sweep.dir))
    return uuid.uuid4().hex[:12]


def run(cfg: DictConfig) -> dict[str, float]:
    """Train with the composed config ``cfg``; returns the final metrics."""
    validate(cfg)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    dist_info = env_info()
    device = engine.resolve_device(cfg.device, local_rank=dist_info.local_rank)
    init_distributed(device=device)
    log_to_rank_file(dist_info.rank)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    log.info("Run dir: %s", run_dir)
    if dist_info.world_size > 1:
        log.info("DDP: rank %d of world size %d (local rank %d), %s backend, device %s", dist_info.rank,
                 dist_info.world_size, dist_info.local_rank, torch.distributed.get_backend(), device)

    resume_from = None
    if cfg.resume and (run_dir / ckpt.LAST).exists():
        resume_from = ckpt.load(run_dir / ckpt.LAST)
        mismatches = resume_mismatches(resume_from.get("config", {}), resolved)
        if mismatches:
            raise ConfigError(
                f"{run_dir / ckpt.LAST} was written with another config ({'; '.join(mismatches)}), so this run "
                "cannot resume from it. Pass resume=false to start over in that directory, or name=<new name> "
                "for a new one.")

    finished = resume_from is not None and resume_from.get("finished")
    uri = resolve_uri(cfg.tracking.uri)
    if dist_info.is_main:
        check_reachable(uri)  # fail fast, before datasets and model
    datasets = None if finished else _datasets(cfg, dist_info)

    tracker = None
    if dist_info.is_main:
        run_id = None
        if resume_from is not None:
            run_id = resume_from.get("mlflow_run_id")
        elif cfg.resume and (run_dir / RUN_ID_FILE).exists():  # killed before its first checkpoint
            run_id = (run_dir / RUN_ID_FILE).read_text().strip()
        tags = {group: str(hc.runtime.choices.get(group)) for group in GROUP_TAGS}
        tags.update(seed=str(cfg.seed), sweep_id=_sweep_id(hc), git_commit=git_commit())
        tracker = RunTracker.start(uri=uri, experiment=cfg.tracking.experiment, run_dir=run_dir,
                                   run_name=run_dir.name, tags=tags, run_id=run_id)
    try:
        if finished:
            log.info("The run in %s has already finished (%s); nothing to train (resume=false trains it again).",
                     run_dir, "  ".join(f"{k} {v:.4f}" for k, v in resume_from.get("metrics", {}).items()))
            if tracker is not None:
                tracker.restore_pending(resume_from.get("pending_metrics", []))
                tracker.flush_until(engine.FINAL_FLUSH_S)
                _finish(tracker, run_dir, resolved)
            return dict(resume_from.get("metrics", {}))
        with checkpoint_on_signal() as preemption:  # SLURM preemption / time limit: save, requeue, resume
            metrics = _train(cfg, resolved, run_dir, device, dist_info, tracker, resume_from, *datasets,
                             preemption=preemption)
    except BaseException as exc:
        if tracker is not None:
            tracker.flush_until(10.0)
            killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
            _finish(tracker, run_dir, resolved, status="KILLED" if killed else "FAILED")
        raise
    if tracker is not None:
        _finish(tracker, run_dir, resolved)
    return metrics


def _datasets(cfg, dist_info):
    """(train, val), validated; rank 0 first, as the synthetic set is generated into a shared cache."""
    if not dist_info.is_main:
        barrier()
    train_set, val_set = build_datasets(cfg.dataset, augmentation=cfg.schedule.augmentation)
    if dist_info.is_main:
        barrier()
    log.info("Datasets: %d train / %d val images, %d classes", len(train_set), len(val_set), train_set.num_classes)
    return train_set, val_set


def _train(cfg, resolved, run_dir, device, dist_info, tracker, resume_from, train_set, val_set, *,
           preemption=None) -> dict[str, float]:
    if tracker is not None:
        tracker.log_params(flatten(resolved))

    seed_everything(cfg.seed + dist_info.rank)
    model = build_detector(backbone=cfg.backbone, assigner=cfg.assigner, model=cfg.model,
                           num_classes=train_set.num_classes)
    log.info("Model: ResNet-%d FPN, assigner %s (o2m rule %s), %.2f M trainable parameters", cfg.backbone.depth,
             cfg.assigner.mode, cfg.assigner.o2m,
             sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6)
    return engine.train(
        model=model, train_set=train_set, val_set=val_set, run_dir=run_dir, device=device,
        amp=engine.use_amp(amp_setting(cfg.amp), device), seed=cfg.seed, batch_size=cfg.batch_size,
        num_workers=cfg.num_workers, epochs=cfg.schedule.epochs, lr_steps=list(cfg.schedule.lr_steps),
        warmup_iters=cfg.schedule.warmup_iters, warmup_ratio=cfg.schedule.warmup_ratio,
        max_iters=cfg.schedule.max_iters, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        # The reduced backbone lr protects pretrained features (DATE); a backbone learning from scratch
        # has nothing to protect and trains at the full lr.
        backbone_lr_mult=cfg.optim.backbone_lr_mult if str(cfg.backbone.weights) != "none" else 1.0,
        clip_grad_norm=cfg.optim.clip_grad_norm,
        branch_weighting=BranchWeighting(**branch_weighting_kwargs(cfg.branch_weighting)),
        loss_weights=dict(cfg.model.loss_weights), eval_every=cfg.eval_every,
        checkpoint_every_iters=cfg.checkpoint_every_iters, log_every=cfg.log_every, dist_info=dist_info,
        tracker=tracker, resume_from=resume_from, config=resolved, preemption=preemption)


def _finish(tracker: RunTracker, run_dir: Path, resolved: dict, status: str = "FINISHED") -> None:
    """Upload the resolved config, the eval results and the job log; close the MLflow run."""
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(resolved))
    tracker.log_artifact(run_dir / "config_resolved.yaml")
    if (run_dir / "eval_results.json").exists():
        tracker.log_artifact(run_dir / "eval_results.json")
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
    _exit_on_sigterm()
    try:
        with errors_as_messages({**dict.fromkeys(INPUT_ERRORS, 2), engine.NonFiniteLossError: 1}):
            return run(cfg)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
