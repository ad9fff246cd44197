"""The NMS-free evidence: does a detector need NMS? For each checkpoint, COCO AP with and without NMS
and the duplicate rate of its raw detections.

    python -m analysis.duplicates --checkpoint outputs/date/*/model_final.pth --out outputs/analysis

Raw detections are the model's top ``detections_per_img`` (100) per image by score, without NMS
(``predict(nms=False)``, whatever the branch). "With NMS" applies ``torchvision.ops.batched_nms`` at
the checkpoint's ``model.nms_thresh`` to those same raw detections, for every model alike.

Duplicate rate: detections taken per image in score order are matched greedily, as COCOeval does at
IoU 0.5: a detection takes the unmatched ground truth of its class with the highest IoU >= 0.5 (a true
positive); if none is free but it overlaps (IoU >= 0.5, same class) a ground truth already taken by a
higher-scoring detection, it is a *duplicate*; otherwise a false positive. The rate is duplicates /
detections over the whole split (crowd regions are not counted as ground truth). A one-to-many model
without NMS fires several times per object (high rate); a one-to-one model should not.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from date.coco_eval import coco_stats, to_coco_results
from date.data.build import build_val_dataset
from date.data.coco import CocoDetection
from date.data.errors import DatasetError
from date.data.loader import build_eval_loader
from date.modeling.build import checkpoint_config, detector_from_checkpoint
from date.runtime import checkpoint as ckpt
from date.runtime.distributed import resolve_device
from date.runtime.logs import errors_as_messages
from analysis.variants import ASSIGNER_ORDER, PAPER_NAMES

MATCH_IOU = 0.5


@dataclass(frozen=True)
class MatchCounts:
    detections: int
    true_positives: int
    duplicates: int

    @property
    def rate(self) -> float:
        return self.duplicates / self.detections if self.detections else 0.0

    def __add__(self, other: "MatchCounts") -> "MatchCounts":
        return MatchCounts(self.detections + other.detections, self.true_positives + other.true_positives,
                           self.duplicates + other.duplicates)


def count_duplicates(boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                     iou_thresh: float = MATCH_IOU) -> MatchCounts:
    """Greedy score-order matching of one image's detections (see the module docstring).

    Args:
        boxes (Tensor[K, 4]) xyxy, scores [K], labels [K]: the detections (any order).
        gt_boxes (Tensor[M, 4]) xyxy, gt_labels [M]: the ground truths, same coordinates.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    k = len(order)
    if k == 0 or len(gt_boxes) == 0:
        return MatchCounts(k, 0, 0)
    iou = box_iou(boxes[order].float(), gt_boxes.float())  # [K, M]
    hit = (iou >= iou_thresh) & (labels[order][:, None] == gt_labels[None, :])  # [K, M]
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    tp = dup = 0
    for i in range(k):
        free = hit[i] & ~taken
        if free.any():
            taken[torch.where(free, iou[i], torch.full_like(iou[i], -1.0)).argmax()] = True
            tp += 1
        elif hit[i].any():
            dup += 1
    return MatchCounts(k, tp, dup)


@dataclass
class ModelRow:
    checkpoint: str
    variant: str  # o2m | o2o | dual | dual_topk
    label: str  # paper name
    seed: str
    nms_thresh: float
    images: int
    ap_raw: float
    ap_nms: float
    detections_raw: int
    detections_nms: int
    duplicate_rate_raw: float
    duplicate_rate_nms: float
    ap50_raw: float
    ap50_nms: float


def variant_of(config: dict) -> str:
    """The assigner option a checkpoint was trained with (the top-k o2m rule marks dual_topk)."""
    assigner = config.get("assigner", {})
    mode = assigner.get("mode", "?")
    return "dual_topk" if mode == "dual" and assigner.get("o2m") == "topk" else mode


class ValSets:
    """Validation sets by dataset config: the checkpoints of one sweep share theirs, built (and
    validated) once instead of once per checkpoint."""

    def __init__(self) -> None:
        self._sets: dict[str, CocoDetection] = {}

    def __call__(self, dataset_cfg) -> CocoDetection:
        key = json.dumps(OmegaConf.to_container(dataset_cfg, resolve=True, enum_to_str=True), sort_keys=True)
        if key not in self._sets:
            self._sets[key] = build_val_dataset(dataset_cfg)
        return self._sets[key]


@torch.no_grad()
def analyse_checkpoint(path: Path, *, device: torch.device, batch_size: int, num_workers: int,
                       val_sets: Optional[ValSets] = None) -> ModelRow:
    saved = ckpt.load(path)
    config = saved.get("config") or {}
    val_set = (val_sets or ValSets())(checkpoint_config(saved).dataset)
    model = detector_from_checkpoint(saved, num_classes=val_set.num_classes).to(device).eval()
    nms_thresh = float(config["model"]["nms_thresh"])
    raw_records, nms_records, image_ids = [], [], []
    raw_counts = nms_counts = MatchCounts(0, 0, 0)
    for images, targets in build_eval_loader(val_set, batch_size=batch_size, num_workers=num_workers):
        raw = model.predict(images.to(device), [tuple(t["image_size"]) for t in targets], nms=False)
        raw = [{k: v.cpu() for k, v in p.items()} for p in raw]
        after = []
        for p in raw:
            keep = batched_nms(p["boxes"], p["scores"], p["labels"], nms_thresh)  # sorted by score
            after.append({k: v[keep] for k, v in p.items()})
        for p_raw, p_nms, t in zip(raw, after, targets):
            # boxes and ground truths are both in the transformed image's pixels
            raw_counts += count_duplicates(p_raw["boxes"], p_raw["scores"], p_raw["labels"], t["boxes"], t["labels"])
            nms_counts += count_duplicates(p_nms["boxes"], p_nms["scores"], p_nms["labels"], t["boxes"], t["labels"])
        raw_records += to_coco_results(raw, targets, val_set.label_to_category_id)
        nms_records += to_coco_results(after, targets, val_set.label_to_category_id)
        image_ids += [int(t["image_id"]) for t in targets]
    stats_raw, _ = coco_stats(val_set.coco, raw_records, image_ids)
    stats_nms, _ = coco_stats(val_set.coco, nms_records, image_ids)
    variant = variant_of(config)
    return ModelRow(checkpoint=str(path), variant=variant, label=PAPER_NAMES.get(variant, variant),
                    seed=str(config.get("seed", "?")), nms_thresh=nms_thresh, images=len(image_ids),
                    ap_raw=stats_raw["AP"], ap_nms=stats_nms["AP"], ap50_raw=stats_raw["AP50"],
                    ap50_nms=stats_nms["AP50"], detections_raw=raw_counts.detections,
                    detections_nms=nms_counts.detections, duplicate_rate_raw=raw_counts.rate,
                    duplicate_rate_nms=nms_counts.rate)


def to_markdown(rows: Sequence[ModelRow]) -> str:
    lines = ["# NMS-free evidence", "",
             "COCO AP (points) on the validation split from each model's raw top-100 detections per image "
             "(no NMS) and after `batched_nms` at the model's `nms_thresh`; duplicate rate = share of "
             "detections that hit (IoU >= 0.5, same class) a ground truth already matched by a higher-scoring "
             "detection.", "",
             "| Model | seed | AP no NMS | AP NMS | ΔAP (NMS − none) | AP50 no NMS | AP50 NMS | dup. rate no NMS "
             "| dup. rate NMS | detections no NMS / NMS | checkpoint |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    order = {a: i for i, a in enumerate(ASSIGNER_ORDER)}
    rows = sorted(rows, key=lambda r: (order.get(r.variant, len(order)), r.variant, r.seed, r.checkpoint))
    for r in rows:
        lines.append(f"| {r.label} | {r.seed} | {100 * r.ap_raw:.2f} | {100 * r.ap_nms:.2f} | "
                     f"{100 * (r.ap_nms - r.ap_raw):+.2f} | {100 * r.ap50_raw:.2f} | {100 * r.ap50_nms:.2f} | "
                     f"{100 * r.duplicate_rate_raw:.1f}% | {100 * r.duplicate_rate_nms:.1f}% | "
                     f"{r.detections_raw} / {r.detections_nms} | `{r.checkpoint}` |")
    by_variant: dict[str, list[ModelRow]] = {}
    for r in rows:
        by_variant.setdefault(r.label, []).append(r)
    if any(len(v) > 1 for v in by_variant.values()):
        lines += ["", "Mean over the checkpoints of each model:", "",
                  "| Model | checkpoints | AP no NMS | AP NMS | dup. rate no NMS | dup. rate NMS |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, group in by_variant.items():
            mean = lambda key: sum(getattr(r, key) for r in group) / len(group)  # noqa: E731
            lines.append(f"| {label} | {len(group)} | {100 * mean('ap_raw'):.2f} | {100 * mean('ap_nms'):.2f} | "
                         f"{100 * mean('duplicate_rate_raw'):.1f}% | {100 * mean('duplicate_rate_nms'):.1f}% |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.duplicates", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="+", type=Path, required=True, metavar="PATH",
                        help="model_final.pth / last.pth files written by date.train")
    parser.add_argument("--out", type=Path, required=True, help="folder for duplicates.md and duplicates.json")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: expected >= 1")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device {args.device}: expected auto, cpu, cuda or cuda:N")
    return args


def main(argv: Optional[Sequence[str]] = None) -> list[ModelRow]:
    args = parse_args(argv)
    with errors_as_messages({ckpt.CheckpointError: 2, DatasetError: 2}):
        device = resolve_device(args.device)
        val_sets = ValSets()
        rows = [analyse_checkpoint(p, device=device, batch_size=args.batch_size, num_workers=args.num_workers,
                                   val_sets=val_sets) for p in args.checkpoint]
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(rows)
    (args.out / "duplicates.md").write_text(markdown)
    (args.out / "duplicates.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(markdown)
    print(f"Wrote duplicates.md and duplicates.json to {args.out}")
    return rows


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
    sys.exit(0)
