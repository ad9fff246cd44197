"""The training loop: optimiser, lr schedule, AMP, clipping, logging, evaluation, checkpoints, resume.

One pass of :func:`train` per job. Iterations are counted globally (``global_iter`` = iterations
done, the MLflow step of train/* metrics); epochs are counted as completed epochs (the step of val/*).

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
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from date import checkpoint as ckpt
from date.coco_eval import predict_coco, score
from date.config import ConfigError
from date.data.build import build_eval_loader, build_train_loader
from date.distributed import DistInfo, barrier, replica_checksums
from date.logging_utils import train_line
from date.losses import total_loss
from date.preemption import CheckpointSignal
from date.tracking import RunTracker

log = logging.getLogger(__name__)

FINAL_FLUSH_S = 120.0  # how long the end of training waits for an unreachable MLflow server


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
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)


def lr_factor(it: int, *, warmup_iters: int, warmup_ratio: float, milestones: Sequence[int]) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based): linear warm-up, then x0.1 per milestone."""
    factor = 0.1 ** sum(it >= m for m in milestones)
    if it < warmup_iters:
        alpha = it / warmup_iters
        factor *= warmup_ratio * (1 - alpha) + alpha
    return factor


def resolve_device(device: str, *, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local rank> if CUDA is available, else cpu.

    A process that sees a single GPU (SLURM binding one GPU per task) uses it whatever its local rank.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{0 if torch.cuda.device_count() == 1 else local_rank}"
    return torch.device(device)


def use_amp(amp: str, device: torch.device) -> bool:
    """amp "auto": bf16 autocast on CUDA only (CPU autocast is slow and changes CPU numbers)."""
    return device.type == "cuda" if amp == "auto" else amp == "true"


def _check_finite(values: torch.Tensor, names: Sequence[str], *, global_iter: int, epoch: int, it: int,
                  iters_per_epoch: int, last_checkpoint: Path) -> list[float]:
    """values [1 + T] = (total, terms...). Returns them as floats or raises NonFiniteLossError."""
    floats = values.tolist()  # the one host sync per iteration
    if all(math.isfinite(v) for v in floats):
        return floats
    bad = next((n for n, v in zip(names[1:], floats[1:]) if not math.isfinite(v)), names[0])
    terms = ", ".join(f"{n} = {v:.4g}" for n, v in zip(names, floats))
    last_good = (f"the last good one, {last_checkpoint}, is intact" if last_checkpoint.exists()
                 else "none had been written yet")
    raise NonFiniteLossError(
        f"Non-finite loss at iteration {global_iter + 1} (epoch {epoch + 1}, iteration {it + 1}/{iters_per_epoch} "
        f"of the epoch): {bad} is {floats[names.index(bad)]} ({terms}). Training stopped without writing a "
        f"checkpoint; {last_good}. Try a lower optim.lr, keep optim.clip_grad_norm set, or amp=false.")


def train(*, model: nn.Module, train_set, val_set, run_dir: Path, device: torch.device, amp: bool, seed: int,
          batch_size: int, num_workers: int, epochs: int, lr_steps: Sequence[int], warmup_iters: int,
          warmup_ratio: float, max_iters: Optional[int], lr: float, weight_decay: float, backbone_lr_mult: float,
          clip_grad_norm: Optional[float], branch_weighting: Callable[[float], Mapping[str, float]],
          loss_weights: Mapping[str, float], eval_every: int, checkpoint_every_iters: int, log_every: int,
          dist_info: DistInfo = DistInfo(), tracker: Optional[RunTracker] = None,
          resume_from: Optional[dict] = None, config: Optional[dict] = None,
          preemption: Optional[CheckpointSignal] = None) -> dict[str, float]:
    """Train ``model`` and return the final metrics ({"val/AP": ..., ..., "train/loss": ...}).

    Args:
        model: the detector (``forward(images, targets) -> {term: loss}``, ``predict``), on the CPU.
        train_set, val_set: datasets from date.data.build_datasets.
        run_dir: where last.pth, model_final.pth and eval_results.json go.
        lr: base lr for 16 images per step; scaled here by batch_size * world_size / 16.
        warmup_iters: capped at one epoch, so small datasets leave warm-up within the first epoch.
        lr_steps: epochs after which the lr drops x0.1.
        max_iters: stop after this many iterations in total (then evaluate), or None.
        branch_weighting: progress in [0, 1] -> {"o2m": w, "o2o": w}.
        loss_weights: {"o2o/cls": 2.0, ...}.
        checkpoint_every_iters: also write last.pth every N iterations (0: only at epoch ends).
        tracker: the MLflow run (rank 0; None elsewhere or without tracking).
        resume_from: a loaded last.pth to continue from.
        config: the resolved config as a plain dict, stored in checkpoints.
        preemption: SLURM's checkpoint signal (date.preemption); once received, training writes
            last.pth at the next iteration boundary and hands over to submitit, which requeues the job.
    """
    run_dir = Path(run_dir)
    main = dist_info.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    net = model
    if dist_info.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    loader_args = dict(batch_size=batch_size, seed=seed, rank=dist_info.rank, world_size=dist_info.world_size,
                       num_workers=num_workers)
    iters_per_epoch = len(build_train_loader(train_set, epoch=0, **loader_args))
    if iters_per_epoch == 0:
        raise ConfigError(f"The training split has fewer images ({len(train_set)}) than one step needs "
                          f"(batch_size={batch_size} x {dist_info.world_size} processes): lower batch_size.")
    total_iters = epochs * iters_per_epoch if max_iters is None else min(max_iters, epochs * iters_per_epoch)
    scaled_lr = lr * batch_size * dist_info.world_size / 16
    optimizer = build_optimizer(model, lr=scaled_lr, weight_decay=weight_decay, backbone_lr_mult=backbone_lr_mult)
    warmup = min(warmup_iters, iters_per_epoch)
    milestones = [e * iters_per_epoch for e in lr_steps]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(
        it, warmup_iters=warmup, warmup_ratio=warmup_ratio, milestones=milestones))
    params = [p for p in model.parameters() if p.requires_grad]

    state = {"epoch": 0, "iter_in_epoch": 0, "global_iter": 0, "eval_history": [], "metrics": {},
             "window": {"count": 0, "images": 0, "sums": {}}}
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        ckpt.set_rng_state(resume_from["rng"])
        for key in state:
            state[key] = resume_from[key]
        state["window"]["images"] = 0  # img/s of the first window counts images since the restart
        if tracker is not None:
            tracker.restore_pending(resume_from.get("pending_metrics", []))
        log.info("Resuming from %s at epoch %d iter %d (global iteration %d/%d)", run_dir / ckpt.LAST,
                 state["epoch"], state["iter_in_epoch"], state["global_iter"], total_iters)
    log.info("Training: %d epochs x %d iterations (%d in total), %d images per step on %s%s, lr %.2e "
             "(%.1e x %d/16), warm-up %d iterations, lr x0.1 at iterations %s", epochs, iters_per_epoch,
             total_iters, batch_size * dist_info.world_size, device, " with bf16 autocast" if amp else "",
             scaled_lr, lr, batch_size * dist_info.world_size, warmup, milestones)

    def save_last(*, finished: bool = False) -> None:
        if not main:
            return
        if tracker is not None:
            tracker.flush()  # metrics sent before a checkpoint are not re-sent after a resume
        ckpt.save_atomic({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no gradient scaler
            "rng": ckpt.rng_state(), **state, "total_iters": total_iters, "finished": finished,
            "mlflow_run_id": tracker.run_id if tracker is not None else None,
            "pending_metrics": tracker.pending_state() if tracker is not None else [], "config": config or {},
        }, run_dir / ckpt.LAST)

    def run_eval(epochs_done: int) -> None:
        """Every process predicts its shard of the val split; rank 0 gathers, scores and logs."""
        results, image_ids = predict_coco(
            model=model, loader=build_eval_loader(val_set, batch_size=batch_size, num_workers=num_workers,
                                                  rank=dist_info.rank, world_size=dist_info.world_size),
            label_to_category_id=val_set.label_to_category_id, device=device, amp=amp)
        if dist_info.world_size > 1:
            shards = [None] * dist_info.world_size
            torch.distributed.all_gather_object(shards, (results, image_ids))
            results = [r for shard_results, _ in shards for r in shard_results]
            image_ids = [i for _, shard_ids in shards for i in shard_ids]
        if main:
            stats = score(val_set.coco, results, image_ids)
            val = {f"val/{k}": v for k, v in stats.items()}
            state["eval_history"].append({"epoch": epochs_done, **val})
            state["metrics"].update(val)
            (run_dir / "eval_results.json").write_text(json.dumps(state["eval_history"], indent=1))
            (run_dir / "detections_val.json").write_text(json.dumps(results))
            if tracker is not None:
                tracker.log_metrics(val, step=epochs_done)
                tracker.flush(force=True)
            log.info("Evaluation after epoch %d: AP %.4f  AP50 %.4f  AP75 %.4f", epochs_done, stats["AP"],
                     stats["AP50"], stats["AP75"])

    # img/s and the ETA count training time only (data loading included; evaluation and checkpoints not)
    start_time, start_iter_count = time.perf_counter(), state["global_iter"]
    train_seconds = window_seconds = 0.0
    last_tick = time.perf_counter()
    bar = tqdm(total=total_iters, initial=state["global_iter"], dynamic_ncols=True, desc="train",
               disable=not (main and sys.stderr.isatty()))
    with logging_redirect_tqdm():
        while state["global_iter"] < total_iters:
            epoch, start_iter = state["epoch"], state["iter_in_epoch"]
            net.train()
            loader = build_train_loader(train_set, epoch=epoch, start_iter=start_iter, **loader_args)
            for it, (images, targets) in enumerate(loader, start=start_iter):
                g = state["global_iter"]
                if g >= total_iters:
                    break
                if preemption is not None and preemption.requested(device):
                    # state is that of the iteration boundary: this batch is drawn again after the resume
                    save_last()
                    log.info("Checkpoint written for requeueing: %s at epoch %d iter %d (global iteration %d/%d)",
                             run_dir / ckpt.LAST, epoch, it, g, total_iters)
                    bar.close()
                    preemption.hand_over()
                branch_weights = branch_weighting(g / total_iters)
                images = images.to(device, non_blocking=True)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    terms = net(images, targets)
                    loss = total_loss(terms, loss_weights, branch_weights)
                names = ["total", *terms]
                values = torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values())])
                if dist_info.world_size > 1:  # log the mean over processes; a NaN on one stops all of them
                    torch.distributed.all_reduce(values)
                    values /= dist_info.world_size
                values = _check_finite(
                    values, names,
                    global_iter=g, epoch=epoch, it=it, iters_per_epoch=iters_per_epoch,
                    last_checkpoint=run_dir / ckpt.LAST)
                lr_now = scheduler.get_last_lr()[0]  # the lr of the FPN/head (group 0) for this step
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
                scheduler.step()
                state["global_iter"] = g = g + 1
                state["iter_in_epoch"] = it + 1
                step_s = time.perf_counter() - last_tick
                last_tick += step_s
                train_seconds += step_s
                window_seconds += step_s

                window = state["window"]
                window["count"] += 1
                window["images"] += images.shape[0] * dist_info.world_size
                for name, value in zip(names, values):
                    window["sums"][name] = window["sums"].get(name, 0.0) + value
                    if name != "total":
                        branch = f"{name.split('/')[0]}/loss"  # weighted contribution of each branch
                        window["sums"][branch] = window["sums"].get(branch, 0.0) + \
                            branch_weights[name.split("/")[0]] * loss_weights[name] * value
                bar.update(1)
                bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{lr_now:.1e}")
                if g % log_every == 0 or g == total_iters:
                    img_s = window["images"] / max(window_seconds, 1e-9)
                    means = {k: v / window["count"] for k, v in window["sums"].items()}
                    per_iter = train_seconds / max(g - start_iter_count, 1)
                    log.info(train_line(eta_s=per_iter * (total_iters - g), iteration=g, total_iters=total_iters,
                                        loss=means.pop("total"), terms={k: means[k] for k in terms}, lr=lr_now,
                                        img_per_s=img_s))
                    if tracker is not None:
                        metrics = {"train/loss": window["sums"]["total"] / window["count"], "train/lr": lr_now,
                                   "train/img_per_s": img_s}
                        metrics.update({f"train/{k}": v for k, v in means.items()})
                        metrics.update({f"train/branch_weight/{b}": w for b, w in branch_weights.items()})
                        tracker.log_metrics(metrics, step=g)
                        tracker.flush()
                    state["metrics"]["train/loss"] = window["sums"]["total"] / window["count"]
                    state["window"] = {"count": 0, "images": 0, "sums": {}}
                    window_seconds = 0.0
                    bar.set_postfix(loss=f"{values[0]:.3f}", lr=f"{lr_now:.1e}", img_s=f"{img_s:.1f}")
                if (checkpoint_every_iters and g % checkpoint_every_iters == 0 and it + 1 < iters_per_epoch
                        and g < total_iters):
                    save_last()
                    last_tick = time.perf_counter()
            # end of an epoch (or of max_iters): evaluate when due, then checkpoint
            epochs_done = epoch + 1
            state["epoch"], state["iter_in_epoch"] = epochs_done, 0
            done = state["global_iter"] >= total_iters
            if epochs_done % eval_every == 0 or done:
                run_eval(epochs_done)
            if not done:
                save_last()
            last_tick = time.perf_counter()
    bar.close()

    if main:
        ckpt.save_atomic({"model": model.state_dict(), "config": config or {}, "metrics": state["metrics"]},
                         run_dir / ckpt.FINAL)
        if tracker is not None and not tracker.flush_until(FINAL_FLUSH_S):
            log.error("%d metrics could not be sent to MLflow (%s); they are kept in %s. Re-run the same command "
                      "once the server is back to send them.", tracker.num_pending, tracker.uri, run_dir / ckpt.LAST)
        save_last(finished=True)
    barrier()
    if dist_info.world_size > 1:  # DDP replicas must end identical; say so in every rank's log
        checksums = replica_checksums(model)
        log.info("Weights checksum of rank %d of %d: %s", dist_info.rank, dist_info.world_size,
                 checksums[dist_info.rank])
        if main and len(set(checksums)) == 1:
            log.info("Weights identical on all %d ranks (checksum %s)", dist_info.world_size, checksums[0])
        elif main:
            log.error("Weights differ between ranks (checksums by rank: %s): the DDP replicas diverged.", checksums)
    log.info("Training done in %.1f s: %s", time.perf_counter() - start_time,
             "  ".join(f"{k} {v:.4f}" for k, v in state["metrics"].items()))
    return dict(state["metrics"])
