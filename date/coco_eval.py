"""COCO box evaluation with pycocotools: run the inference path over a loader, score with ``COCOeval``.

The loader's batches are resized, normalised and padded (date/data); date.inference runs the inference branch and
rescales its boxes to the original file's pixels; COCO wants them as [x, y, w, h] with COCO category ids.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterable, Optional, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from date.data.crowdhuman import CrowdHumanDetection
from date.inference import Detections, rescale, run_branches

log = logging.getLogger(__name__)

# The 12 numbers of COCOeval.stats, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(predictions: Sequence[dict], targets: Sequence[dict],
                    label_to_category_id: Sequence[int]) -> list[dict]:
    """Detections of one loader batch as COCO result records.

    Args:
        predictions: per image ``boxes`` Tensor[K, 4] xyxy in transformed pixels, ``scores`` [K],
            ``labels`` [K] int64 contiguous.
        targets: per image ``image_id``, ``orig_size`` (H0, W0) and ``image_size`` (H, W).
        label_to_category_id: contiguous label -> COCO category id.
    Returns:
        [{"image_id", "category_id", "bbox": [x, y, w, h] in original pixels, "score"}, ...]
    """
    detections = rescale(predictions, [t["image_size"] for t in targets], [t["orig_size"] for t in targets])
    return coco_records(detections, [t["image_id"] for t in targets], label_to_category_id)


def coco_records(detections: Sequence[Detections], image_ids: Sequence[int],
                 label_to_category_id: Sequence[int]) -> list[dict]:
    """COCO result records of detections whose boxes are in the original image's pixels (date.inference.rescale):
    [{"image_id", "category_id", "bbox": [x, y, w, h] rounded to 0.01, "score" rounded to 1e-5}, ...]."""
    records = []
    for det, image_id in zip(detections, image_ids):
        boxes = det["boxes"]  # [K, 4] xyxy
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # [K, 4]
        for box, score, label in zip(xywh.tolist(), det["scores"].float().tolist(), det["labels"].tolist()):
            records.append({"image_id": int(image_id), "category_id": int(label_to_category_id[label]),
                            "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return records


def coco_stats(coco_gt: COCO, results: list[dict], image_ids: Iterable[int] | None = None) -> tuple[dict, str]:
    """COCOeval bbox on ``results``; returns ({name: value} for the 12 numbers, the printed table).

    No detections at all is a valid outcome (an untrained model): AP 0 (or -1 where the split has no
    ground truth of that size), not a crash.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # pycocotools prints progress and the table
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                               "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            evaluator.summarize()
    return dict(zip(STAT_NAMES, (float(v) for v in evaluator.stats))), table.getvalue()


@torch.no_grad()
def predict_coco(*, model: torch.nn.Module, loader: Iterable, label_to_category_id: Sequence[int],
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                 branch: str | None = None) -> tuple[list[dict], list[int]]:
    """Run ``model.predict`` over ``loader`` (date.inference.run_branches); returns (COCO result records, the image
    ids seen).

    Args:
        model: a detector with ``predict_branches(images [B, 3, H, W], image_sizes, branches, *, nms) -> per
            branch a list of per-image dicts`` (not DDP-wrapped; see DATEDetector).
        loader: yields (images [B, 3, Hp, Wp], targets) as described in date/data.
        label_to_category_id: contiguous label -> COCO category id.
        amp_dtype: run the forward under autocast to this dtype (None: no autocast).
        branch: the branch to evaluate (None: the model's inference branch; see DATEDetector.predict).
    """
    (results,), image_ids = predict_coco_branches(model=model, loader=loader, label_to_category_id=label_to_category_id,
                                                  device=device, amp_dtype=amp_dtype, branches=(branch,))
    return results, image_ids


@torch.no_grad()
def predict_coco_branches(*, model: torch.nn.Module, loader: Iterable, label_to_category_id: Sequence[int],
                          device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                          branches: Sequence[str | None], memory_format: torch.memory_format = torch.preserve_format
                          ) -> tuple[list[list[dict]], list[int]]:
    """:func:`predict_coco` of several branches on one forward per batch (the images in ``memory_format``, the
    model's); returns (the records of each branch, in the order of ``branches``, the image ids seen)."""
    was_training = model.training
    model.eval()
    results: list[list[dict]] = [[] for _ in branches]
    image_ids: list[int] = []
    try:
        for images, targets in loader:
            predictions = run_branches(model, images, [t["image_size"] for t in targets], branches, device=device,
                                       amp_dtype=amp_dtype, memory_format=memory_format)
            for records, branch_predictions in zip(results, predictions):
                records += to_coco_results(branch_predictions, targets, label_to_category_id)
            image_ids += [int(t["image_id"]) for t in targets]
    finally:
        model.train(was_training)
    return results, image_ids


def evaluate(*, model: torch.nn.Module, loader: Iterable, coco_gt: COCO, label_to_category_id: Sequence[int],
             device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             label: str = "") -> tuple[dict[str, float], list[dict]]:
    """:func:`predict_coco` then :func:`coco_stats` (the table goes to the log).

    Returns:
        ({"AP": ..., "AP50": ..., ... 12 numbers}, the COCO result records).
    """
    results, image_ids = predict_coco(model=model, loader=loader, label_to_category_id=label_to_category_id,
                                      device=device, amp_dtype=amp_dtype)
    return score(coco_gt, results, image_ids, label=label), results


def inference_label(branch: str) -> str:
    """How the log names what a detector's inference scores: "the inference branch (o2o, no NMS)"."""
    return f"the inference branch ({branch}{' + NMS' if branch == 'o2m' else ', no NMS'})"


def score(coco_gt: COCO, results: list[dict], image_ids: Sequence[int], *, label: str = "") -> dict[str, float]:
    """:func:`coco_stats` on the given images, logging the usual table, headed with ``label`` (what was evaluated:
    training evaluates two branches, one table each)."""
    stats, table = coco_stats(coco_gt, results, image_ids)
    log.info("COCO bbox evaluation%s on %d images, %d detections:\n%s", f" of {label}" if label else "",
             len(set(image_ids)), len(results), table.rstrip())
    return stats


def crowd_score(dataset: CrowdHumanDetection, results: list[dict], image_ids: Sequence[int], *,
                label: str = "") -> dict[str, float]:
    """CrowdHuman's AP, MR^-2, JI and recall (CrowdHumanDetection.crowd_scores) beside COCO's, logged; {} with a
    warning when the evaluated images hold no person (an eval_subset of images with ignore regions only)."""
    try:
        crowd = dataset.crowd_scores(results, image_ids)
    except ValueError as error:
        log.warning("No CrowdHuman metrics %s: %s", label, error)
        return {}
    log.info("CrowdHuman metrics %s: AP %.4f  MR^-2 %.4f  JI %.4f  recall %.4f", label, crowd["AP"], crowd["mMR"],
             crowd["JI"], crowd["recall"])
    return crowd

