"""The NMS-free evidence: does a detector need NMS? For each checkpoint, COCO AP with and without NMS
and the duplicate rate of its raw detections.

    python -m analysis.duplicates --checkpoint outputs/date/*/model_final.pth --out outputs/analysis
    python -m analysis.duplicates --checkpoint FCOS.pth DATE.pth --out outputs/analysis --show 4 --show-score 0.3

Raw detections are the model's top ``detections_per_img`` (100) per image by score, without NMS
(date.inference.run_branches with ``nms=False``, whatever the branch). "With NMS" applies
``torchvision.ops.batched_nms`` at the checkpoint's ``model.nms_thresh`` to those same raw detections, for every
model alike.

Duplicate rate: detections taken per image in score order are matched greedily, as COCOeval does at
IoU 0.5: a detection takes the unmatched ground truth of its class with the highest IoU >= 0.5 (a true
positive); if none is free but it overlaps (IoU >= 0.5, same class) a ground truth already taken by a
higher-scoring detection, it is a *duplicate*; otherwise a false positive. The rate is duplicates /
detections over the whole split (crowd regions are not counted as ground truth). A one-to-many model
without NMS fires several times per object (high rate); a one-to-one model should not.

``--show N`` draws that as ``duplicates_show.png`` / ``.pdf`` (analysis/duplicates_figure.py): N validation
images, FCOS without NMS, FCOS with NMS, DATE without NMS and the ground truth, each detection coloured by its
outcome in this same matching.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from date.coco_eval import coco_stats, to_coco_results
from date.data.build import build_val_dataset
from date.data.coco import CocoDetection
from date.data.errors import DatasetError
from date.data.loader import build_eval_loader
from date.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from date.inference import run_branches
from date.modeling.build import checkpoint_config, detector_from_checkpoint
from date.runtime import checkpoint as ckpt
from date.runtime.distributed import resolve_device
from date.runtime.logs import errors_as_messages
from analysis.duplicates_figure import Panel, ShownImage, draw_figure, save_figure
from analysis.runs import AnalysisError
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


# The outcome of each detection in the greedy matching (match_detections)
TRUE_POSITIVE, DUPLICATE, FALSE_POSITIVE = 0, 1, 2


def match_detections(boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                     iou_thresh: float = MATCH_IOU) -> Tensor:
    """Each detection's outcome in the greedy score-order matching (see the module docstring): the one
    classification that both the duplicate rate and the ``--show`` figure use.

    Args:
        boxes (Tensor[K, 4]) xyxy, scores [K], labels [K]: the detections (any order).
        gt_boxes (Tensor[M, 4]) xyxy, gt_labels [M]: the ground truths, same coordinates.
    Returns:
        Tensor[K] int64 in the detections' own order: TRUE_POSITIVE, DUPLICATE or FALSE_POSITIVE. A detection's
        outcome depends only on the higher-scoring ones, so dropping all below a score keeps the others' outcomes.
    """
    return match_to_ground_truth(boxes, scores, labels, gt_boxes, gt_labels, iou_thresh=iou_thresh)[0]


def match_to_ground_truth(boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                          iou_thresh: float = MATCH_IOU) -> tuple[Tensor, Tensor]:
    """:func:`match_detections` with the ground truth of each outcome: (outcome [K], ground truth [K] int64), the
    latter the one a true positive took, the taken one of highest IoU a duplicate overlaps (the object it
    repeats), -1 for a false positive."""
    outcome = torch.full((len(boxes),), FALSE_POSITIVE, dtype=torch.long)
    matched = torch.full((len(boxes),), -1, dtype=torch.long)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return outcome, matched
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order].float(), gt_boxes.float())  # [K, M]
    hit = (iou >= iou_thresh) & (labels[order][:, None] == gt_labels[None, :])  # [K, M]
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    for i, det in enumerate(order.tolist()):
        free = hit[i] & ~taken
        if free.any():
            matched[det] = torch.where(free, iou[i], torch.full_like(iou[i], -1.0)).argmax()
            taken[matched[det]] = True
            outcome[det] = TRUE_POSITIVE
        elif hit[i].any():
            matched[det] = torch.where(hit[i], iou[i], torch.full_like(iou[i], -1.0)).argmax()
            outcome[det] = DUPLICATE
    return outcome, matched


def count_duplicates(boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                     iou_thresh: float = MATCH_IOU) -> MatchCounts:
    """The counts of :func:`match_detections` on one image (arguments as there)."""
    outcome = match_detections(boxes, scores, labels, gt_boxes, gt_labels, iou_thresh=iou_thresh)
    return MatchCounts(len(outcome), int((outcome == TRUE_POSITIVE).sum()), int((outcome == DUPLICATE).sum()))


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


@dataclass
class Loaded:
    """A checkpoint ready to run: its detector (eval mode, on the device), training config and validation set."""

    model: torch.nn.Module
    config: dict
    val_set: CocoDetection

    @property
    def nms_thresh(self) -> float:
        return float(self.config["model"]["nms_thresh"])


def load_checkpoint(path: Path, *, device: torch.device, val_sets: Optional[ValSets] = None) -> Loaded:
    saved = ckpt.load(path)
    val_set = (val_sets or ValSets())(checkpoint_config(saved).dataset)
    model = detector_from_checkpoint(saved, num_classes=val_set.num_classes).to(device).eval()
    return Loaded(model=model, config=saved.get("config") or {}, val_set=val_set)


@torch.no_grad()
def raw_and_nms(loaded: Loaded, images: Tensor, targets: Sequence[dict], *, device: torch.device,
                ) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """One batch's raw detections (the inference branch with ``nms=False``) and the same after ``batched_nms`` at
    the checkpoint's ``nms_thresh``, on the CPU; boxes in the transformed image's pixels, as the targets' (the COCO
    records rescale them: to_coco_results)."""
    [raw] = run_branches(loaded.model, images, [t["image_size"] for t in targets], device=device, nms=False)
    raw = [{k: v.cpu() for k, v in p.items()} for p in raw]
    after = []
    for p in raw:
        keep = batched_nms(p["boxes"], p["scores"], p["labels"], loaded.nms_thresh)  # sorted by score
        after.append({k: v[keep] for k, v in p.items()})
    return raw, after


def image_counts(detections: dict[str, Tensor], target: dict) -> MatchCounts:
    return count_duplicates(detections["boxes"], detections["scores"], detections["labels"], target["boxes"],
                            target["labels"])


@torch.no_grad()
def analyse_checkpoint(path: Path, *, device: torch.device, batch_size: int, num_workers: int,
                       val_sets: Optional[ValSets] = None) -> ModelRow:
    loaded = load_checkpoint(path, device=device, val_sets=val_sets)
    config, val_set = loaded.config, loaded.val_set
    raw_records, nms_records, image_ids = [], [], []
    raw_counts = nms_counts = MatchCounts(0, 0, 0)
    for images, targets in build_eval_loader(val_set, batch_size=batch_size, num_workers=num_workers):
        raw, after = raw_and_nms(loaded, images, targets, device=device)
        for p_raw, p_nms, t in zip(raw, after, targets):
            raw_counts += image_counts(p_raw, t)
            nms_counts += image_counts(p_nms, t)
        raw_records += to_coco_results(raw, targets, val_set.label_to_category_id)
        nms_records += to_coco_results(after, targets, val_set.label_to_category_id)
        image_ids += [int(t["image_id"]) for t in targets]
    stats_raw, _ = coco_stats(val_set.coco, raw_records, image_ids)
    stats_nms, _ = coco_stats(val_set.coco, nms_records, image_ids)
    variant = variant_of(config)
    return ModelRow(checkpoint=str(path), variant=variant, label=PAPER_NAMES.get(variant, variant),
                    seed=str(config.get("seed", "?")), nms_thresh=loaded.nms_thresh, images=len(image_ids),
                    ap_raw=stats_raw["AP"], ap_nms=stats_nms["AP"], ap50_raw=stats_raw["AP50"],
                    ap50_nms=stats_nms["AP50"], detections_raw=raw_counts.detections,
                    detections_nms=nms_counts.detections, duplicate_rate_raw=raw_counts.rate,
                    duplicate_rate_nms=nms_counts.rate)


SHOW_VARIANTS = {"FCOS": ("o2m",), "DATE": ("dual", "dual_topk")}


def show_checkpoints(rows: Sequence[ModelRow]) -> tuple[str, str]:
    """The FCOS and the DATE checkpoint that ``--show`` draws: the first of each among the analysed ones."""
    picked = {}
    for name, variants in SHOW_VARIANTS.items():
        found = [r.checkpoint for r in rows if r.variant in variants]
        if not found:
            assigners = ", ".join(f"{r.checkpoint}: {r.variant}" for r in rows)
            raise AnalysisError(
                f"--show needs an FCOS (assigner=o2m) and a DATE (assigner=dual or dual_topk) checkpoint, but no "
                f"--checkpoint is a {name} one (their assigners: {assigners}). Add a model_final.pth of a {name} run "
                "to --checkpoint.")
        picked[name] = found[0]
    return picked["FCOS"], picked["DATE"]


def shown_panel(name: str, detections: dict[str, Tensor], target: dict, score_thresh: float) -> Panel:
    """The detections scoring above ``score_thresh``, each with its outcome in the matching of *all* the image's
    detections (the rate's): as the matching goes by score, the shown ones keep the outcome they have there."""
    outcome = match_detections(detections["boxes"], detections["scores"], detections["labels"], target["boxes"],
                               target["labels"])
    shown = detections["scores"] > score_thresh
    boxes = detections["boxes"].float()
    return Panel(name, *(boxes[shown & (outcome == kind)].numpy() for kind in (TRUE_POSITIVE, DUPLICATE,
                                                                                 FALSE_POSITIVE)))


def unnormalised(image: Tensor, size: tuple[int, int]) -> np.ndarray:
    """A batch image (ImageNet-normalised, padded) as the dataset's RGB [H, W, 3] in [0, 1], padding cut off."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    height, width = size
    return (image[:, :height, :width].cpu() * std + mean).clamp(0.0, 1.0).permute(1, 2, 0).numpy()


def show_thresholds(fcos: Loaded, date: Loaded, score_thresh: Optional[float]) -> tuple[float, float]:
    """The score above which each model's detections are drawn: ``--show-score``, but never below the threshold
    its predictions (and so the duplicate rate) already start at (model.score_thresh)."""
    return tuple(max(score_thresh or 0.0, float(m.config["model"]["score_thresh"])) for m in (fcos, date))


@torch.no_grad()
def collect_shown(fcos: Loaded, date: Loaded, count: int, *, device: torch.device, batch_size: int, num_workers: int,
                  score_thresh: Optional[float] = None) -> list[ShownImage]:
    """The first ``count`` validation images with the panels of the --show figure, from the same loader and
    detections (raw_and_nms) as the duplicate rate."""
    if fcos.val_set is not date.val_set:
        raise AnalysisError("--show draws FCOS and DATE on the same validation images, but their checkpoints were "
                            f"trained with different dataset configs (validation sets {fcos.val_set.ann_file} and "
                            f"{date.val_set.ann_file}). Pass an FCOS and a DATE checkpoint of the same dataset.")
    val_set = fcos.val_set
    if not 1 <= count <= len(val_set):
        raise AnalysisError(f"--show {count}: the validation split {val_set.ann_file} has {len(val_set)} images. "
                            f"Ask for between 1 and {len(val_set)} images.")
    fcos_thresh, date_thresh = show_thresholds(fcos, date, score_thresh)
    shown = []
    for images, targets in build_eval_loader(val_set, batch_size=batch_size, num_workers=num_workers):
        fcos_raw, fcos_nms = raw_and_nms(fcos, images, targets, device=device)
        date_raw, _ = raw_and_nms(date, images, targets, device=device)
        for i, t in enumerate(targets):
            panels = [shown_panel("FCOS, no NMS", fcos_raw[i], t, fcos_thresh),
                      shown_panel("FCOS, NMS", fcos_nms[i], t, fcos_thresh),
                      shown_panel("DATE, no NMS", date_raw[i], t, date_thresh)]
            shown.append(ShownImage(int(t["image_id"]), unnormalised(images[i], t["image_size"]),
                                    t["boxes"].float().numpy(), panels))
            if len(shown) == count:
                return shown
    return shown


def show_caption(fcos: Loaded, date: Loaded, score_thresh: Optional[float]) -> str:
    fcos_thresh, date_thresh = show_thresholds(fcos, date, score_thresh)
    scores = f"{fcos_thresh:g}" if fcos_thresh == date_thresh else f"{fcos_thresh:g} (FCOS), {date_thresh:g} (DATE)"
    return (f"Detections scoring > {scores}; FCOS NMS at IoU {fcos.nms_thresh:g}; DATE = its o2o branch. "
            f"Duplicate: a same-class hit (IoU ≥ {MATCH_IOU:g}) on an object a higher-scoring detection took")


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
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for duplicates.md, duplicates.json (and duplicates_show.png / .pdf with --show)")
    parser.add_argument("--show", type=int, default=None, metavar="N",
                        help="also draw the first N validation images: FCOS without and with NMS, DATE, ground truth "
                             "(the first o2m and the first dual / dual_topk checkpoint)")
    parser.add_argument("--show-score", type=float, default=None, metavar="S",
                        help="--show draws only detections scoring above S (default: all that the rate counts, i.e. "
                             "above each checkpoint's model.score_thresh); each keeps its outcome in the rate")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: expected >= 1")
    if args.show is not None and args.show < 1:
        parser.error(f"--show {args.show}: expected the number of validation images to draw, >= 1 (e.g. --show 4)")
    if args.show_score is not None and not 0.0 <= args.show_score < 1.0:
        parser.error(f"--show-score {args.show_score}: expected a score in [0, 1), e.g. --show-score 0.3")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device {args.device}: expected auto, cpu, cuda or cuda:N")
    return args


def main(argv: Optional[Sequence[str]] = None) -> list[ModelRow]:
    args = parse_args(argv)
    with errors_as_messages({ckpt.CheckpointError: 2, DatasetError: 2, AnalysisError: 2}):
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
        if args.show is not None:
            write_show(rows, args, device=device, val_sets=val_sets)
    return rows


def write_show(rows: Sequence[ModelRow], args: argparse.Namespace, *, device: torch.device, val_sets: ValSets,
               ) -> list[Path]:
    """The --show figure of the first FCOS and DATE checkpoints among ``rows``."""
    fcos_path, date_path = show_checkpoints(rows)
    fcos, date = (load_checkpoint(Path(p), device=device, val_sets=val_sets) for p in (fcos_path, date_path))
    shown = collect_shown(fcos, date, args.show, device=device, batch_size=args.batch_size,
                          num_workers=args.num_workers, score_thresh=args.show_score)
    paths = save_figure(draw_figure(shown, caption=show_caption(fcos, date, args.show_score)), args.out)
    print(f"Wrote {' and '.join(p.name for p in paths)} to {args.out} (FCOS: {fcos_path}, DATE: {date_path})")
    return paths


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
    sys.exit(0)
