"""COCO evaluation during training: val/* after every ``eval_every``-th epoch and after the last iteration."""
from __future__ import annotations

import json
import logging
from typing import Optional

import torch
from torch.utils.data import Subset

from date.coco_eval import crowd_score, inference_label, predict_coco_branches, score
from date.data.crowdhuman import CrowdHumanDetection
from date.data.loader import build_eval_loader
from date.runtime import checkpoint as ckpt
from date.training.hooks.base import Hook

log = logging.getLogger("date.trainer")


class Evaluation(Hook):
    """COCO evaluation of the inference branch (val/*) and, for DATE, of its o2m branch with NMS (val/o2m/*, when
    ``o2m_branch``), both from one forward per batch: every process predicts its shard, rank 0 scores, records
    (eval_results.json, detections_val.json, the run's metrics, the tracker) and logs.

    Args:
        val_set: the val split (date.data.build).
        every: evaluate after every that many epochs; the last iteration is always followed by an evaluation.
        subset: before the last evaluation, only the first that many val images (None: all).
        o2m_branch: also evaluate DATE's o2m branch with NMS (a diagnostic).
    """

    def __init__(self, val_set, *, every: int, subset: Optional[int], o2m_branch: bool):
        self.val_set, self.every, self.subset, self.o2m_branch = val_set, every, subset, o2m_branch
        self.loaders = {}  # images evaluated -> loader

    def after_epoch(self, trainer) -> None:
        epochs_done = trainer.state.epoch
        if epochs_done % self.every == 0 or trainer.done:
            self.evaluate(trainer, epochs_done, subset=None if trainer.done else self.subset)

    def evaluate(self, trainer, epochs_done: int, subset: Optional[int] = None) -> None:
        """Evaluate on the first ``subset`` val images (None: all); rank 0 records and logs."""
        model = trainer.model
        branches = [None]
        if self.o2m_branch and model.inference_branch != "o2m" and "o2m" in model.head.branches:
            branches.append("o2m")
        images = len(self.val_set) if subset is None else min(subset, len(self.val_set))
        log.info("Evaluating after epoch %d on %d val images%s", epochs_done, images,
                 "" if images == len(self.val_set) else f" of {len(self.val_set)} (eval_subset)")
        per_branch, image_ids = self._predict(trainer, branches, images)
        if not trainer.run.dist.is_main:
            return
        results = per_branch[0]
        stats = score(self.val_set.coco, results, image_ids,
                      label=f"{inference_label(model.inference_branch)} after epoch {epochs_done}")
        val = {f"val/{k}": v for k, v in stats.items()}
        if isinstance(self.val_set, CrowdHumanDetection):
            crowd = crowd_score(self.val_set, results, image_ids, label=f"after epoch {epochs_done}")
            val.update({f"val/crowd/{k}": v for k, v in crowd.items()})
        if len(branches) > 1:
            o2m_stats = score(self.val_set.coco, per_branch[1], image_ids,
                              label=f"the o2m branch + NMS (a diagnostic) after epoch {epochs_done}")
            val.update({f"val/o2m/{k}": v for k, v in o2m_stats.items()})
            log.info("The o2m branch with NMS (a diagnostic) after epoch %d: AP %.4f  AP50 %.4f", epochs_done,
                     o2m_stats["AP"], o2m_stats["AP50"])
        self._record(trainer, epochs_done, val, results, len(set(image_ids)))
        log.info("Evaluation after epoch %d (%d val images): AP %.4f  AP50 %.4f  AP75 %.4f", epochs_done,
                 len(set(image_ids)), stats["AP"], stats["AP50"], stats["AP75"])

    def _record(self, trainer, epochs_done: int, val: dict[str, float], results: list[dict], images: int) -> None:
        """Into the state (eval history, metrics), the run dir's files and the tracker."""
        state, run = trainer.state, trainer.run
        state.eval_history.append({"epoch": epochs_done, "images": images, **val})
        state.metrics.update(val)
        ckpt.write_atomic(run.run_dir / "eval_results.json", json.dumps(state.eval_history, indent=1))
        ckpt.write_atomic(run.run_dir / "detections_val.json", json.dumps(results))
        run.tracker.log_metrics(val, step=epochs_done)
        run.tracker.flush(force=True)

    def _predict(self, trainer, branches: list[str | None], size: int) -> tuple[list[list[dict]], list[int]]:
        """Every process predicts its shard of the first ``size`` val images; all of it, gathered, on rank 0 (the
        records of each of ``branches``, the image ids)."""
        dist = trainer.run.dist
        # Workers do not persist between evaluations: the training loader's workers, forked in between, would
        # inherit a live eval iterator and fail to shut its workers down when they exit.
        if size not in self.loaders:
            images = self.val_set if size == len(self.val_set) else Subset(self.val_set, range(size))
            self.loaders[size] = build_eval_loader(images, batch_size=trainer.cfg.batch_size,
                                                   num_workers=trainer.cfg.num_workers, rank=dist.rank,
                                                   world_size=dist.world_size)
        per_branch, image_ids = predict_coco_branches(
            model=trainer.model, loader=self.loaders[size], device=trainer.run.device, amp_dtype=trainer.amp_dtype,
            label_to_category_id=self.val_set.label_to_category_id, branches=branches,
            memory_format=trainer.memory_format)
        if dist.world_size > 1:
            shards = [None] * dist.world_size
            torch.distributed.all_gather_object(shards, (per_branch, image_ids))
            per_branch = [[r for shard_branches, _ in shards for r in shard_branches[b]] for b in range(len(branches))]
            image_ids = [i for _, shard_ids in shards for i in shard_ids]
        return per_branch, image_ids
