"""The training loop: it runs steps; evaluation, checkpoints, logging and the rest are hooks (hooks/).

:class:`Trainer` is built once per job from the composed config, the objects made from it (the detector, the
criterion, the datasets) and the :class:`RunContext` (run dir, device, rank, tracker, stop signal); then
:meth:`Trainer.resume` (a rerun) and :meth:`Trainer.fit`. Iterations are counted globally (``global_iter`` =
iterations done, the MLflow step of train/* metrics); epochs as completed epochs (the step of val/*).

The loop knows only the step (detectron2's TrainerBase): before_train; before_step, the step, after_step for each
iteration; after_epoch at each epoch's end; after_train. Each hook acts at these points in the order of
:meth:`Trainer._hooks`.

Resume contract: ``last.pth`` holds everything the loop's future depends on (weights, optimiser,
scheduler, RNG states, epoch + iteration within the epoch, the logging window, unsent metrics), and
the data loader restarts the epoch's order at ``start_iter``. A resumed CPU run therefore produces
the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

from date.assign import NonFiniteQualityError
from date.config import ConfigError, amp_setting, resolved_config
from date.criterion import DATECriterion, Losses
from date.data.loader import build_train_loader
from date.runtime import checkpoint as ckpt
from date.runtime.distributed import DistInfo, autocast_dtype
from date.runtime.logs import metrics_table
from date.runtime.preemption import CheckpointSignal, StopOnSignal
from date.runtime.run_tracker import NullTracker, RunTracker
from date.runtime.tracking import mask_credentials
from date.training.hooks.base import Hook
from date.training.hooks.checkpoints import Checkpoints
from date.training.hooks.evaluation import Evaluation
from date.training.hooks.final_model import FinalModel
from date.training.hooks.level_diagnostics import LevelDiagnostics
from date.training.hooks.metrics_flush import MetricsFlush
from date.training.hooks.progress_bar import ProgressBar
from date.training.hooks.replicas import ReplicaCheck
from date.training.hooks.stop_signal import StopSignal
from date.training.hooks.train_log import TrainLog
from date.training.hooks.weight_check import WeightCheck
from date.training.non_finite import check_finite, check_weights, non_finite_error
from date.training.optim import build_lr_schedule, build_optimizer
from date.training.state import StepOutput, TrainState

log = logging.getLogger("date.trainer")


@dataclass(frozen=True)
class RunContext:
    """Where and how this process trains.

    Args:
        run_dir: where last.pth, model_final.pth and eval_results.json go.
        device, dist: this process's device and rank.
        tracker: the MLflow run (rank 0 of ``python -m date.train``), else a NullTracker.
        preemption: SLURM's checkpoint signal, or SIGTERM / Ctrl-C outside SLURM (date.runtime.preemption); None:
            none is deferred to the loop.
    """

    run_dir: Path
    device: torch.device
    dist: DistInfo = DistInfo()
    tracker: RunTracker | NullTracker = field(default_factory=NullTracker)
    preemption: CheckpointSignal | StopOnSignal | None = None


class Trainer:
    """One training job.

    Args:
        cfg: the composed training config (date/config.py TrainConfig): batch_size, num_workers, seed,
            schedule.*, optim.*, eval_every, checkpoint_every_iters, log_every, amp.
        model: the detector (``forward(images) -> (outputs, locations)``, ``predict``), on the CPU.
        criterion: outputs, locations, targets, progress -> Losses.
        datasets: (train, val) from date.data.build.
        run: the run dir, device, rank, tracker and stop signal.
    """

    def __init__(self, cfg, *, model: nn.Module, criterion: DATECriterion, datasets: tuple, run: RunContext):
        self.cfg, self.model, self.criterion, self.run = cfg, model, criterion, run
        self.train_set, val_set = datasets
        self.amp_dtype = autocast_dtype(amp_setting(cfg.amp), run.device)  # None: no autocast
        # fp16 (GPUs without native bf16) needs loss scaling; it skips the steps whose gradients overflow
        self.scaler = torch.amp.GradScaler(run.device.type, enabled=self.amp_dtype == torch.float16)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.config = resolved_config(cfg)  # stored in every checkpoint
        if self.config["tracking"]["uri"]:  # checkpoints travel (the MLflow model holds one): no password in them
            self.config["tracking"]["uri"] = mask_credentials(self.config["tracking"]["uri"])
        if run.dist.is_main:
            run.run_dir.mkdir(parents=True, exist_ok=True)
        self.net = self._place_model()
        self.loader_args = dict(batch_size=cfg.batch_size, seed=cfg.seed, dist=run.dist, num_workers=cfg.num_workers)
        self.iters_per_epoch = len(build_train_loader(self.train_set, epoch=0, **self.loader_args))
        if self.iters_per_epoch == 0:
            raise ConfigError(f"The training split has fewer images ({len(self.train_set)}) than one step needs "
                              f"(batch_size={cfg.batch_size} x {run.dist.world_size} processes): lower batch_size.")
        s = cfg.schedule
        all_iters = s.epochs * self.iters_per_epoch
        self.total_iters = all_iters if s.max_iters is None else min(s.max_iters, all_iters)
        self._build_optimizer()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.state = TrainState()
        self.hooks = self._hooks(val_set)
        self.lr_now = 0.0  # the lr of the FPN/head (group 0) in the latest step
        self.start_iter, self.elapsed_before = 0, 0.0  # where this process started (fit)
        self.start_time = self._tick = time.perf_counter()

    def _hooks(self, val_set) -> list[Hook]:
        """The hooks, in the order they act at each point: after a step the window is logged before a checkpoint
        holds it; after an epoch the weights are checked, then evaluated, then a stop signal or the epoch's
        checkpoint saves them; after training model_final.pth and the last metrics come before last.pth."""
        cfg = self.cfg
        return [WeightCheck(), TrainLog(cfg.log_every), ProgressBar(cfg.log_every), LevelDiagnostics(),
                Evaluation(val_set, every=cfg.eval_every, subset=cfg.eval_subset, o2m_branch=cfg.eval_o2m_branch),
                StopSignal(self.run.preemption), FinalModel(), MetricsFlush(),
                Checkpoints(cfg.checkpoint_every_iters), ReplicaCheck()]

    # ------------------------------------------------------------------ set-up
    def _place_model(self) -> nn.Module:
        device = self.run.device
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model.to(device, memory_format=self.memory_format)
        if self.run.dist.world_size <= 1:
            return self.model
        return DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def _build_optimizer(self) -> None:
        """AdamW at the lr scaled to the global batch, warm-up capped at one epoch, x0.1 at the lr steps."""
        cfg, o = self.cfg, self.cfg.optim
        images_per_step = cfg.batch_size * self.run.dist.world_size
        lr = o.lr * images_per_step / 16
        # The reduced backbone lr protects pretrained features (DATE); a backbone learning from scratch
        # has nothing to protect and trains at the full lr.
        backbone_lr_mult = o.backbone_lr_mult if str(cfg.backbone.weights) != "none" else 1.0
        self.optimizer = build_optimizer(self.model, lr=lr, weight_decay=o.weight_decay,
                                         backbone_lr_mult=backbone_lr_mult)
        warmup = min(cfg.schedule.warmup_iters, self.iters_per_epoch)
        milestones = [e * self.iters_per_epoch for e in cfg.schedule.lr_steps]
        self.scheduler = build_lr_schedule(self.optimizer, warmup_iters=warmup,
                                           warmup_ratio=cfg.schedule.warmup_ratio, milestones=milestones)
        log.info("Training: %d epochs x %d iterations (%d in total), %d images per step on %s%s, lr %.2e "
                 "(%.1e x %d/16), warm-up %d iterations, lr x0.1 at iterations %s", cfg.schedule.epochs,
                 self.iters_per_epoch, self.total_iters, images_per_step, self.run.device,
                 f" with {str(self.amp_dtype).removeprefix('torch.')} autocast" if self.amp_dtype else "", lr, o.lr,
                 images_per_step, warmup, milestones)

    def resume(self, saved: dict) -> None:
        """Continue from a loaded last.pth (before :meth:`fit`): weights, optimiser, scheduler, scaler, RNG states,
        the training state and the metrics it had not sent."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # fp16 runs; absent from older checkpoints
            self.scaler.load_state_dict(saved["scaler"])
        ckpt.set_rng_state(saved["rng"])
        self.state = TrainState.from_checkpoint(saved)
        self.state.window.images = 0  # img/s of the first window counts images since the restart
        self.run.tracker.restore_pending(saved.get("pending_metrics", []))
        log.info("Resuming from %s at epoch %d iter %d (global iteration %d/%d)", self.last_checkpoint,
                 self.state.epoch, self.state.iter_in_epoch, self.state.global_iter, self.total_iters)

    # ------------------------------------------------------------------ the loop
    @property
    def done(self) -> bool:
        """True once the last iteration of the schedule is done."""
        return self.state.global_iter >= self.total_iters

    @property
    def last_checkpoint(self) -> Path:
        return self.run.run_dir / ckpt.LAST

    def fit(self) -> dict[str, float]:
        """Train to the end of the schedule; return the final metrics ({"val/AP": ..., "train/loss": ...})."""
        self.start_time, self.start_iter = time.perf_counter(), self.state.global_iter
        self.elapsed_before = self.state.elapsed_s  # wall time of the earlier processes of this run (resumes)
        self.restart_clock()
        with logging_redirect_tqdm():
            for hook in self.hooks:
                hook.before_train(self)
            while not self.done:
                self._train_epoch()
                self.state.epoch += 1
                self.state.iter_in_epoch = 0
                for hook in self.hooks:
                    hook.after_epoch(self)
                self.restart_clock()
        for hook in self.hooks:
            hook.after_train(self)
        this_process = time.perf_counter() - self.start_time
        resumed = f"; {this_process:.1f} s since the last resume" if self.elapsed_before else ""
        log.info("Training done in %.1f s (the whole run%s). Final metrics:\n%s", self.elapsed_before + this_process,
                 resumed, metrics_table(self.state.metrics))
        return dict(self.state.metrics)

    def restart_clock(self) -> None:
        """The time until the next step ends is the next step's (what came before, e.g. a save, is not training)."""
        self._tick = time.perf_counter()

    def _train_epoch(self) -> None:
        """The steps of the current epoch, from the iteration it stopped at, to its end or the schedule's."""
        state = self.state
        self.net.train()
        loader = build_train_loader(self.train_set, epoch=state.epoch, start_iter=state.iter_in_epoch,
                                    **self.loader_args)
        for images, targets in loader:
            if self.done:
                break
            for hook in self.hooks:
                hook.before_step(self)
            losses, values = self.step(images, targets)
            state.global_iter += 1
            state.iter_in_epoch += 1
            now = time.perf_counter()
            seconds, self._tick = now - self._tick, now
            step = StepOutput(losses, values, images=images.shape[0] * self.run.dist.world_size, lr=self.lr_now,
                              seconds=seconds)
            for hook in self.hooks:
                hook.after_step(self, step)

    def step(self, images: torch.Tensor, targets: list[dict]) -> tuple[Losses, list[float]]:
        """One optimisation step; returns the losses and [total, terms...] as floats (mean over processes).
        Nothing non-finite reaches the weights: the check runs between backward and the update."""
        state, device = self.state, self.run.device
        where = (f"iteration {state.global_iter + 1} (epoch {state.epoch + 1}, iteration {state.iter_in_epoch + 1}/"
                 f"{self.iters_per_epoch} of the epoch)")
        images = images.to(device, non_blocking=True, memory_format=self.memory_format)
        with torch.autocast(device_type=device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs, locations = self.net(images)
            try:
                losses = self.criterion(outputs, locations, targets, state.global_iter / self.total_iters)
            except NonFiniteQualityError as exc:  # diverged o2o predictions, found by the matcher before any loss
                raise non_finite_error(f"o2o matching cost at {where}: {exc}",
                                       last_checkpoint=self.last_checkpoint) from None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        self.scaler.unscale_(self.optimizer)  # clip and check the true gradients (a no-op without fp16)
        clip = self.cfg.optim.clip_grad_norm
        # the norm of all gradients (before clipping): NaN/Inf there would reach the weights through the update
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, clip) if clip is not None
                     else torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
        values = torch.stack([losses.total.detach().float(), *(t.detach().float() for t in losses.terms.values()),
                              grad_norm.detach().float().to(device)])
        if self.run.dist.world_size > 1:  # log the mean over processes; a NaN on one stops all of them
            torch.distributed.all_reduce(values)
            values /= self.run.dist.world_size
        floats = values.tolist()  # the one host sync per iteration
        # with fp16 an overflowing gradient is routine: the scaler skips that step and lowers its scale
        check = floats if not self.scaler.is_enabled() else [*floats[:-1], 0.0]
        check_finite(check, ["total", *losses.terms, "gradient norm"], where=where,
                     last_checkpoint=self.last_checkpoint)
        self.lr_now = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses, floats[:-1]

    # ------------------------------------------------------------------ last.pth
    def save_last(self, *, finished: bool = False) -> None:
        """last.pth, atomically (rank 0): everything a resume needs, under the keys it has always had."""
        if not self.run.dist.is_main:
            return
        check_weights(self.model, global_iter=self.state.global_iter, last_checkpoint=self.last_checkpoint)
        tracker = self.run.tracker
        tracker.flush()  # metrics sent before a checkpoint are not re-sent after a resume
        self.state.elapsed_s = self.elapsed_before + time.perf_counter() - self.start_time
        ckpt.save_atomic({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(),
            **self.state.as_checkpoint(),
            "total_iters": self.total_iters, "finished": finished,
            "mlflow_run_id": tracker.run_id, "pending_metrics": tracker.pending_state(), "config": self.config,
        }, self.last_checkpoint)
