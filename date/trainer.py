"""The training loop: optimiser, lr schedule, AMP, clipping, logging, evaluation, checkpoints, resume.

:class:`Trainer` is built once per job from the composed config and the objects made from it (the
detector, the criterion, the datasets), then :meth:`Trainer.fit` runs. Iterations are counted globally
(``global_iter`` = iterations done, the MLflow step of train/* metrics); epochs as completed epochs (the
step of val/*).

Resume contract: ``last.pth`` holds everything the loop's future depends on (weights, optimiser,
scheduler, RNG states, epoch + iteration within the epoch, the logging window, unsent metrics), and
the data loader restarts the epoch's order at ``start_iter``. A resumed CPU run therefore produces
the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from date.assign import NonFiniteQualityError
from date.coco_eval import inference_label, predict_coco_branches, score
from date.config import ConfigError, amp_setting, resolved_config
from date.criterion import DATECriterion, Losses
from date.data.loader import build_eval_loader, build_train_loader
from date.run_figure import write_run_figure
from date.runtime import checkpoint as ckpt
from date.runtime.distributed import DistInfo, autocast_dtype, barrier, replica_checksums
from date.runtime.logs import examples, metrics_table, train_line
from date.runtime.preemption import CheckpointSignal, StopOnSignal
from date.runtime.tracking import RunTracker, mask_credentials

log = logging.getLogger(__name__)

FINAL_FLUSH_S = 120.0  # how long the end of training waits for an unreachable MLflow server
FIGURE = "convergence.png"  # the run's own convergence figure, in its run dir (date/run_figure.py)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; training stopped without writing a checkpoint."""


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, backbone_lr_mult: float,
                    backbone_prefix: str = "backbone.body.") -> torch.optim.AdamW:
    """AdamW with four parameter groups: {ResNet body, rest} x {decayed, not decayed}.

    The ResNet body (``backbone.body.*``) trains at ``lr * backbone_lr_mult``; the FPN and head at
    ``lr``. Norm weights and biases (1-d parameters) get no weight decay: decaying them only pulls
    scales/offsets towards 0 without regularising anything (the common detection practice).
    Frozen parameters are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith(backbone_prefix), param.ndim <= 1), []).append(param)
    param_groups = []
    for (is_backbone, no_decay), params in sorted(groups.items()):  # fixed order: resume-safe
        param_groups.append({"params": params, "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
                             "weight_decay": 0.0 if no_decay else weight_decay})
    # The fused kernel: one pass over all parameters (on a 2-core CPU 5x faster than the per-tensor loop).
    fused = all(p.device.type in ("cpu", "cuda") for group in param_groups for p in group["params"])
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=fused)


def lr_factor(it: int, *, warmup_iters: int, warmup_ratio: float, milestones: Sequence[int]) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based): linear warm-up, then x0.1 per milestone."""
    factor = 0.1 ** sum(it >= m for m in milestones)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_ratio * (1 - alpha) + alpha
    return factor


def check_finite(values: list[float], names: Sequence[str], *, where: str, last_checkpoint: Path) -> None:
    """values = (total, loss terms..., gradient norm) as floats, named by ``names``; raise NonFiniteLossError
    naming the first bad loss term (else the gradients)."""
    if all(math.isfinite(v) for v in values):
        return
    detail = ", ".join(f"{n} = {v:.4g}" for n, v in zip(names, values))
    if all(math.isfinite(v) for v in values[:-1]):
        what = f"gradients at {where}: their norm is {values[-1]} while the loss is finite ({detail})"
    else:
        bad = next((n for n, v in zip(names[1:-1], values[1:-1]) if not math.isfinite(v)), names[0])
        what = f"loss at {where}: {bad} is {values[names.index(bad)]} ({detail})"
    raise non_finite_error(what, last_checkpoint=last_checkpoint)


def non_finite_error(what: str, *, last_checkpoint: Path) -> NonFiniteLossError:
    """The one-paragraph stop message; nothing non-finite is ever written, so the last checkpoint is good."""
    last_good = (f"the last good one, {last_checkpoint}, is intact" if last_checkpoint.exists()
                 else "none had been written yet")
    return NonFiniteLossError(
        f"Non-finite {what}. Training stopped without writing a checkpoint; {last_good}. Try a lower optim.lr, keep "
        "optim.clip_grad_norm set, or amp=false.")


class Trainer:
    """One training job.

    Args:
        cfg: the composed training config (date/config.py TrainConfig): batch_size, num_workers, seed,
            schedule.*, optim.*, eval_every, checkpoint_every_iters, log_every, amp.
        model: the detector (``forward(images) -> (outputs, locations)``, ``predict``), on the CPU.
        criterion: outputs, locations, targets, progress -> Losses.
        train_set, val_set: datasets from date.data.build.
        run_dir: where last.pth, model_final.pth and eval_results.json go.
        device, dist_info: this process's device and rank.
        tracker: the MLflow run (rank 0; None elsewhere or without tracking).
        resume_from: a loaded last.pth to continue from.
        preemption: SLURM's checkpoint signal, or SIGTERM / Ctrl-C outside SLURM (date.runtime.preemption); once
            received, training writes last.pth at the next iteration boundary and hands over: submitit requeues
            the job, or the process says how to resume and exits.
    """

    def __init__(self, cfg, *, model: nn.Module, criterion: DATECriterion, train_set, val_set, run_dir: Path,
                 device: torch.device, dist_info: DistInfo = DistInfo(), tracker: Optional[RunTracker] = None,
                 resume_from: Optional[dict] = None, preemption: CheckpointSignal | StopOnSignal | None = None):
        self.cfg, self.model, self.criterion = cfg, model, criterion
        self.train_set, self.val_set = train_set, val_set
        self.run_dir, self.device, self.dist, self.tracker = Path(run_dir), device, dist_info, tracker
        self.preemption = preemption
        self.amp_dtype = autocast_dtype(amp_setting(cfg.amp), device)  # None: no autocast
        # fp16 (GPUs without native bf16) needs loss scaling; it skips the steps whose gradients overflow
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.config = resolved_config(cfg)  # stored in every checkpoint
        if self.config["tracking"]["uri"]:  # checkpoints travel (the MLflow model holds one): no password in them
            self.config["tracking"]["uri"] = mask_credentials(self.config["tracking"]["uri"])
        if dist_info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.net = self._place_model()
        self.loader_args = dict(batch_size=cfg.batch_size, seed=cfg.seed, dist=dist_info, num_workers=cfg.num_workers)
        self.iters_per_epoch = len(build_train_loader(train_set, epoch=0, **self.loader_args))
        if self.iters_per_epoch == 0:
            raise ConfigError(f"The training split has fewer images ({len(train_set)}) than one step needs "
                              f"(batch_size={cfg.batch_size} x {dist_info.world_size} processes): lower batch_size.")
        s = cfg.schedule
        all_iters = s.epochs * self.iters_per_epoch
        self.total_iters = all_iters if s.max_iters is None else min(s.max_iters, all_iters)
        self._build_optimizer()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.state = {"epoch": 0, "iter_in_epoch": 0, "global_iter": 0, "eval_history": [], "metrics": {},
                      "loss_history": [], "window": {"count": 0, "images": 0, "sums": {}},
                      "elapsed_s": 0.0}  # wall time of the earlier processes of this run (resumes)
        if resume_from is not None:
            self._resume(resume_from)
        self.start_time, self.start_iter = time.perf_counter(), self.state["global_iter"]
        self.elapsed_before = self.state["elapsed_s"]
        self.train_seconds = self.window_seconds = 0.0  # training time only (data included; eval, saving not)
        self.last_tick = time.perf_counter()
        self.eval_loaders = {}  # images evaluated -> loader

    # ------------------------------------------------------------------ set-up
    def _place_model(self) -> nn.Module:
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model.to(self.device, memory_format=self.memory_format)
        if self.dist.world_size <= 1:
            return self.model
        return DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_optimizer(self) -> None:
        """AdamW at the lr scaled to the global batch, warm-up capped at one epoch, x0.1 at the lr steps."""
        cfg, o = self.cfg, self.cfg.optim
        images_per_step = cfg.batch_size * self.dist.world_size
        self.lr = o.lr * images_per_step / 16
        # The reduced backbone lr protects pretrained features (DATE); a backbone learning from scratch
        # has nothing to protect and trains at the full lr.
        backbone_lr_mult = o.backbone_lr_mult if str(cfg.backbone.weights) != "none" else 1.0
        self.optimizer = build_optimizer(self.model, lr=self.lr, weight_decay=o.weight_decay,
                                         backbone_lr_mult=backbone_lr_mult)
        self.warmup = min(cfg.schedule.warmup_iters, self.iters_per_epoch)
        self.milestones = [e * self.iters_per_epoch for e in cfg.schedule.lr_steps]
        ratio = cfg.schedule.warmup_ratio
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(
            it, warmup_iters=self.warmup, warmup_ratio=ratio, milestones=self.milestones))
        log.info("Training: %d epochs x %d iterations (%d in total), %d images per step on %s%s, lr %.2e "
                 "(%.1e x %d/16), warm-up %d iterations, lr x0.1 at iterations %s", cfg.schedule.epochs,
                 self.iters_per_epoch, self.total_iters, images_per_step, self.device,
                 f" with {str(self.amp_dtype).removeprefix('torch.')} autocast" if self.amp_dtype else "", self.lr, o.lr, images_per_step, self.warmup,
                 self.milestones)

    def _resume(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # fp16 runs; absent from older checkpoints
            self.scaler.load_state_dict(saved["scaler"])
        ckpt.set_rng_state(saved["rng"])
        for key in self.state:
            self.state[key] = saved.get(key, self.state[key])  # loss_history: absent from older checkpoints
        self.state["window"]["images"] = 0  # img/s of the first window counts images since the restart
        if self.tracker is not None:
            self.tracker.restore_pending(saved.get("pending_metrics", []))
        log.info("Resuming from %s at epoch %d iter %d (global iteration %d/%d)", self.run_dir / ckpt.LAST,
                 self.state["epoch"], self.state["iter_in_epoch"], self.state["global_iter"], self.total_iters)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train to the end of the schedule; return the final metrics ({"val/AP": ..., "train/loss": ...})."""
        bar = tqdm(total=self.total_iters, initial=self.state["global_iter"], dynamic_ncols=True, desc="train",
                   disable=not (self.dist.is_main and sys.stderr.isatty()))
        with logging_redirect_tqdm():
            while self.state["global_iter"] < self.total_iters:
                self._train_epoch(bar)
                self._end_epoch(bar)
        bar.close()
        return self._finish()

    def _stop_requested(self) -> bool:
        return self.preemption is not None and self.preemption.requested(self.device)

    def _train_epoch(self, bar: tqdm) -> None:
        epoch, start_iter = self.state["epoch"], self.state["iter_in_epoch"]
        self.net.train()
        loader = build_train_loader(self.train_set, epoch=epoch, start_iter=start_iter, **self.loader_args)
        for it, (images, targets) in enumerate(loader, start=start_iter):
            g = self.state["global_iter"]
            if g >= self.total_iters:
                break
            if self._stop_requested():
                self._hand_over(bar)
            losses, values = self._step(images, targets, epoch, it)
            self.state["global_iter"] = g = g + 1
            self.state["iter_in_epoch"] = it + 1
            step_s = time.perf_counter() - self.last_tick
            self.last_tick += step_s
            self.train_seconds += step_s
            self.window_seconds += step_s
            self._accumulate(losses, values, images.shape[0])
            bar.update(1)
            bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{self.lr_now:.1e}")
            if g % self.cfg.log_every == 0 or g == self.total_iters:
                img_s = self._log_window(losses)
                bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{self.lr_now:.1e}", img_s=f"{img_s:.1f}")
            every = self.cfg.checkpoint_every_iters
            if every and g % every == 0 and it + 1 < self.iters_per_epoch and g < self.total_iters:
                self.save_last()
                self.last_tick = time.perf_counter()

    def _step(self, images: torch.Tensor, targets: list[dict], epoch: int, it: int) -> tuple[Losses, list[float]]:
        """One optimisation step; returns the losses and [total, terms..., gradient norm] as floats (mean over
        processes). Nothing non-finite reaches the weights: the check runs between backward and the update."""
        g = self.state["global_iter"]
        where = f"iteration {g + 1} (epoch {epoch + 1}, iteration {it + 1}/{self.iters_per_epoch} of the epoch)"
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs, locations = self.net(images)
            try:
                losses = self.criterion(outputs, locations, targets, g / self.total_iters)
            except NonFiniteQualityError as exc:  # diverged o2o predictions, found by the matcher before any loss
                raise non_finite_error(f"o2o matching cost at {where}: {exc}",
                                       last_checkpoint=self.run_dir / ckpt.LAST) from None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        self.scaler.unscale_(self.optimizer)  # clip and check the true gradients (a no-op without fp16)
        clip = self.cfg.optim.clip_grad_norm
        # the norm of all gradients (before clipping): NaN/Inf there would reach the weights through the update
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, clip) if clip is not None
                     else torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
        values = torch.stack([losses.total.detach().float(), *(t.detach().float() for t in losses.terms.values()),
                              grad_norm.detach().float().to(self.device)])
        if self.dist.world_size > 1:  # log the mean over processes; a NaN on one stops all of them
            torch.distributed.all_reduce(values)
            values /= self.dist.world_size
        floats = values.tolist()  # the one host sync per iteration
        # with fp16 an overflowing gradient is routine: the scaler skips that step and lowers its scale
        check = floats if not self.scaler.is_enabled() else [*floats[:-1], 0.0]
        check_finite(check, ["total", *losses.terms, "gradient norm"], where=where,
                     last_checkpoint=self.run_dir / ckpt.LAST)
        self.lr_now = self.scheduler.get_last_lr()[0]  # the lr of the FPN/head (group 0) for this step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses, floats[:-1]

    def _accumulate(self, losses: Losses, values: list[float], batch_images: int) -> None:
        """Add one step to the logging window: the total, each term, and each branch's weighted sum."""
        window = self.state["window"]
        window["count"] += 1
        window["images"] += batch_images * self.dist.world_size
        sums = window["sums"]
        for name, value in zip(["total", *losses.terms], values):
            sums[name] = sums.get(name, 0.0) + value
            if name != "total":
                branch = f"{name.split('/')[0]}/loss"  # weighted contribution of each branch
                sums[branch] = sums.get(branch, 0.0) + losses.weights[name] * value

    def _log_window(self, losses: Losses) -> float:
        """The log line and the MLflow train/* metrics of the iterations since the last one; returns img/s."""
        g, window = self.state["global_iter"], self.state["window"]
        img_s = window["images"] / max(self.window_seconds, 1e-9)
        means = {k: v / window["count"] for k, v in window["sums"].items()}
        per_iter = self.train_seconds / max(g - self.start_iter, 1)
        log.info(train_line(eta_s=per_iter * (self.total_iters - g),
                            epoch=(self.state["epoch"] + 1, math.ceil(self.total_iters / self.iters_per_epoch)),
                            iteration=(g, self.total_iters),
                            loss=means.pop("total"), terms={k: means[k] for k in losses.terms}, lr=self.lr_now,
                            img_per_s=img_s))
        train_loss = window["sums"]["total"] / window["count"]
        if self.tracker is not None:
            metrics = {"train/loss": train_loss, "train/lr": self.lr_now, "train/img_per_s": img_s}
            metrics.update({f"train/{k}": v for k, v in means.items()})
            metrics.update({f"train/branch_weight/{b}": w for b, w in losses.branch_weights.items()})
            self.tracker.log_metrics(metrics, step=g)
            self.tracker.flush()
        self.state["metrics"]["train/loss"] = train_loss
        self.state["loss_history"].append([g, train_loss])
        self.state["window"] = {"count": 0, "images": 0, "sums": {}}
        self.window_seconds = 0.0
        return img_s

    def _end_epoch(self, bar: tqdm) -> None:
        """After an epoch (or max_iters): evaluate when due, then checkpoint (and stop there if a stop signal came
        meanwhile, e.g. during the evaluation)."""
        self._check_weights()  # before evaluating or saving them
        epochs_done = self.state["epoch"] + 1
        self.state["epoch"], self.state["iter_in_epoch"] = epochs_done, 0
        done = self.state["global_iter"] >= self.total_iters
        if epochs_done % self.cfg.eval_every == 0 or done:
            self.evaluate(epochs_done, subset=None if done else self.cfg.eval_subset)
        if not done and self._stop_requested():
            self._hand_over(bar)
        if not done:
            self.save_last()
        self.last_tick = time.perf_counter()

    # ------------------------------------------------------------------ evaluation and checkpoints
    def evaluate(self, epochs_done: int, subset: Optional[int] = None) -> None:
        """COCO evaluation of the inference branch (val/*) and, for DATE, of its o2m branch with NMS
        (val/o2m/*, when eval_o2m_branch), both from one forward per batch: rank 0 scores, records and logs.
        ``subset``: only the first that many val images (None: all)."""
        branches = [None]
        if self.cfg.eval_o2m_branch and self.model.inference_branch != "o2m" and "o2m" in self.model.head.branches:
            branches.append("o2m")
        images = len(self.val_set) if subset is None else min(subset, len(self.val_set))
        log.info("Evaluating after epoch %d on %d val images%s", epochs_done, images,
                 "" if images == len(self.val_set) else f" of {len(self.val_set)} (eval_subset)")
        per_branch, image_ids = self._predict_val(branches, images)
        if not self.dist.is_main:
            return
        results = per_branch[0]
        stats = score(self.val_set.coco, results, image_ids,
                      label=f"{inference_label(self.model.inference_branch)} after epoch {epochs_done}")
        val = {f"val/{k}": v for k, v in stats.items()}
        if len(branches) > 1:
            o2m_stats = score(self.val_set.coco, per_branch[1], image_ids,
                              label=f"the o2m branch + NMS (a diagnostic) after epoch {epochs_done}")
            val.update({f"val/o2m/{k}": v for k, v in o2m_stats.items()})
            log.info("The o2m branch with NMS (a diagnostic) after epoch %d: AP %.4f  AP50 %.4f", epochs_done,
                     o2m_stats["AP"], o2m_stats["AP50"])
        self.state["eval_history"].append({"epoch": epochs_done, "images": len(set(image_ids)), **val})
        self.state["metrics"].update(val)
        ckpt.write_atomic(self.run_dir / "eval_results.json", json.dumps(self.state["eval_history"], indent=1))
        ckpt.write_atomic(self.run_dir / "detections_val.json", json.dumps(results))
        if self.tracker is not None:
            self.tracker.log_metrics(val, step=epochs_done)
            self.tracker.flush(force=True)
        log.info("Evaluation after epoch %d (%d val images): AP %.4f  AP50 %.4f  AP75 %.4f", epochs_done,
                 len(set(image_ids)), stats["AP"], stats["AP50"], stats["AP75"])

    def _predict_val(self, branches: list[str | None], size: int) -> tuple[list[list[dict]], list[int]]:
        """Every process predicts its shard of the first ``size`` val images; all of it, gathered, on rank 0 (the
        records of each of ``branches``, the image ids)."""
        # Workers do not persist between evaluations: the training loader's workers, forked in between, would
        # inherit a live eval iterator and fail to shut its workers down when they exit.
        if size not in self.eval_loaders:
            images = self.val_set if size == len(self.val_set) else Subset(self.val_set, range(size))
            self.eval_loaders[size] = build_eval_loader(images, batch_size=self.cfg.batch_size,
                                                        num_workers=self.cfg.num_workers, rank=self.dist.rank,
                                                        world_size=self.dist.world_size)
        per_branch, image_ids = predict_coco_branches(
            model=self.model, loader=self.eval_loaders[size], device=self.device, amp_dtype=self.amp_dtype,
            label_to_category_id=self.val_set.label_to_category_id, branches=branches)
        if self.dist.world_size > 1:
            shards = [None] * self.dist.world_size
            torch.distributed.all_gather_object(shards, (per_branch, image_ids))
            per_branch = [[r for shard_branches, _ in shards for r in shard_branches[b]] for b in range(len(branches))]
            image_ids = [i for _, shard_ids in shards for i in shard_ids]
        return per_branch, image_ids

    def save_last(self, *, finished: bool = False) -> None:
        """last.pth, atomically (rank 0): everything a resume needs."""
        if not self.dist.is_main:
            return
        self._check_weights()
        tracker = self.tracker
        if tracker is not None:
            tracker.flush()  # metrics sent before a checkpoint are not re-sent after a resume
        self.state["elapsed_s"] = self.elapsed_before + time.perf_counter() - self.start_time
        ckpt.save_atomic({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(),
            **self.state,
            "total_iters": self.total_iters, "finished": finished,
            "mlflow_run_id": tracker.run_id if tracker is not None else None,
            "pending_metrics": tracker.pending_state() if tracker is not None else [], "config": self.config,
        }, self.run_dir / ckpt.LAST)

    def _check_weights(self) -> None:
        """Refuse to write weights that overflowed in the last update (finite gradients, a huge lr)."""
        bad = [name for name, t in self.model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise non_finite_error(f"weights after iteration {self.state['global_iter']}: {examples(bad, 3)}",
                                   last_checkpoint=self.run_dir / ckpt.LAST)

    def _hand_over(self, bar: tqdm) -> None:
        """A stop signal arrived: the state is that of the iteration boundary, so the batch not yet drawn is drawn
        after the resume."""
        self.save_last()
        purpose = " for requeueing" if isinstance(self.preemption, CheckpointSignal) else ""
        log.info("Checkpoint written%s: %s at epoch %d iter %d (global iteration %d/%d)", purpose,
                 self.run_dir / ckpt.LAST, self.state["epoch"], self.state["iter_in_epoch"], self.state["global_iter"],
                 self.total_iters)
        bar.close()
        self.preemption.hand_over()

    def _finish(self) -> dict[str, float]:
        """model_final.pth, the last metrics sent, last.pth marked finished, the replicas compared."""
        if self.dist.is_main:
            self._check_weights()
            ckpt.save_atomic({"model": self.model.state_dict(), "config": self.config, "metrics": self.state["metrics"]},
                             self.run_dir / ckpt.FINAL)
            write_run_figure(self.state["eval_history"], self.state["loss_history"], self.run_dir / FIGURE,
                             title=f"{self.run_dir.name}: assigner {self.cfg.assigner.mode}, seed {self.cfg.seed}")
            tracker = self.tracker
            if tracker is not None and not tracker.flush_until(FINAL_FLUSH_S):
                log.error("%d metrics could not be sent to MLflow (%s); they are kept in %s. Re-run the same "
                          "command once the server is back to send them.", tracker.num_pending, tracker.display_uri,
                          self.run_dir / ckpt.LAST)
            self.save_last(finished=True)
        barrier()
        if self.dist.world_size > 1:
            self._compare_replicas()
        this_process = time.perf_counter() - self.start_time
        resumed = f"; {this_process:.1f} s since the last resume" if self.elapsed_before else ""
        log.info("Training done in %.1f s (the whole run%s). Final metrics:\n%s", self.elapsed_before + this_process,
                 resumed, metrics_table(self.state["metrics"]))
        return dict(self.state["metrics"])

    def _compare_replicas(self) -> None:
        """DDP replicas must end identical; say so in every rank's log."""
        checksums = replica_checksums(self.model)
        rank, world = self.dist.rank, self.dist.world_size
        log.info("Weights checksum of rank %d of %d: %s", rank, world, checksums[rank])
        if self.dist.is_main and len(set(checksums)) == 1:
            log.info("Weights identical on all %d ranks (checksum %s)", world, checksums[0])
        elif self.dist.is_main:
            log.error("Weights differ between ranks (checksums by rank: %s): the DDP replicas diverged.", checksums)
