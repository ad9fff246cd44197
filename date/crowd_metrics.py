"""CrowdHuman's metrics: AP, MR^-2, recall and JI, computed as the toolkit behind the published CrowdHuman
numbers computes them (CrowdDet's lib/evaluate, the same code in DeFCN/cvpods and in DATE's repository).
Pure numpy / scipy: no torch, no files (date.data.odgt reads them; date.crowdhuman_eval is the command).

Dimensions: D = detections of an image, G = its ground-truth boxes, P = its persons (the ground truths that
are not ignore regions), I = its ignore regions (G = P + I).

The rules (issue #22; each has a hand-computed test in tests/test_crowdhuman_metrics.py):
- Boxes are clipped to the image first: x1 into [0, w-1], y1 into [0, h-1], x2 into [0, w], y2 into [0, h].
- IoU = inter / (a + b - inter + 1e-6), no +1 pixel; IoA = inter / (area of the box tested + 1e-6).
- AP, MR^-2, recall: per image a greedy matching (:func:`match_image`); then the kept detections of all images
  in one list by descending score (stable: ties keep the image order, then the per-image order); recall and
  precision at every point of it; AP = the trapezoid rule over those raw points (no precision envelope, no
  added (0, 1) point); recall = the last recall; MR^-2 = exp(mean(log(miss rate))) at the 9 FPPI references,
  each taking the first point whose FPPI >= it (the last point if none).
- JI: per score threshold 0.0, 0.1, ..., 0.9 and image, a maximum-weight matching on the IoU > 0.5 pairs
  (:func:`max_weight_matching`), unmatched boxes inside ignore regions removed; JI = the best threshold's mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

IOU_THRESH = 0.5  # the toolkit's one threshold: matching (IoU), ignore regions (IoA) and the JI pairs
EPS = 1e-6  # the toolkit's guard in every IoU / IoA denominator
# FPPI references of the log-average miss rate: 10^-2 .. 10^0 in 9 steps, as the toolkit writes them
FPPI_REFERENCES = (0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000)
# JI keeps score > threshold; written 0.1 * i as in the toolkit (so 0.1 * 3 = 0.30000000000000004: a score of
# exactly 0.3 is left out at that threshold, as there)
JI_THRESHOLDS = tuple(0.1 * i for i in range(10))


@dataclass(frozen=True)
class ImageGT:
    """The ground truth of one image: ``boxes`` float [G, 4] xyxy pixels as written (unclipped), ``ignore``
    bool [G] (True: an ignore region), the image's ``width`` and ``height`` in pixels."""

    boxes: np.ndarray
    ignore: np.ndarray
    width: float
    height: float


@dataclass(frozen=True)
class ImageDT:
    """The detections of one image: ``boxes`` float [D, 4] xyxy pixels, ``scores`` float [D], in file order."""

    boxes: np.ndarray
    scores: np.ndarray


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """[N, 4] xyxy -> a clipped copy: x1 into [0, w-1], y1 into [0, h-1], x2 into [0, w], y2 into [0, h]."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, 0] = np.minimum(np.maximum(out[:, 0], 0), width - 1)
    out[:, 1] = np.minimum(np.maximum(out[:, 1], 0), height - 1)
    out[:, 2] = np.maximum(np.minimum(out[:, 2], width), 0)
    out[:, 3] = np.maximum(np.minimum(out[:, 3], height), 0)
    return out


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4], [M, 4] xyxy -> [N, M] intersection areas (0 where the boxes do not overlap)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.maximum(w, 0) * np.maximum(h, 0)


def _area(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] xyxy -> [N]; negative for a box written with x2 < x1 (the toolkit does not guard it either)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4], [M, 4] xyxy -> [N, M] IoU = inter / (area_a + area_b - inter + 1e-6)."""
    inter = _intersection(a, b)
    return inter / (_area(a)[:, None] + _area(b)[None, :] - inter + EPS)


def ioa_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4], [M, 4] xyxy -> [N, M] intersection over the area of the box of ``a`` (+ 1e-6)."""
    return _intersection(a, b) / (_area(a)[:, None] + EPS)


def _inside_ignore(boxes: np.ndarray, ignores: np.ndarray) -> np.ndarray:
    """[N, 4], [I, 4] -> bool [N]: IoA > 0.5 with at least one ignore region."""
    if len(ignores) == 0 or len(boxes) == 0:
        return np.zeros(len(boxes), bool)
    return ioa_matrix(boxes, ignores).max(axis=1) > IOU_THRESH


def _split(gt: ImageGT) -> tuple[np.ndarray, np.ndarray]:
    """The clipped persons [P, 4] and ignore regions [I, 4] of an image, each in file order."""
    boxes = clip_boxes(gt.boxes, gt.width, gt.height)
    ignore = np.asarray(gt.ignore, bool).reshape(-1)
    return boxes[~ignore], boxes[ignore]


def match_image(gt: ImageGT, dt: ImageDT) -> tuple[np.ndarray, np.ndarray]:
    """The toolkit's greedy matching of one image; returns (scores [K], is_true_positive bool [K]) of the kept
    detections (K <= D), in descending score order (ties: file order).

    Each detection, best first, takes the still unmatched person of highest IoU, which must be > 0.5 (ties: the
    first in file order); one that takes none and has IoA > 0.5 with an ignore region is dropped (neither true
    nor false positive). Ignore regions absorb any number of detections.
    """
    order = np.argsort(-np.asarray(dt.scores, np.float64), kind="stable")  # stable: ties keep file order
    scores = np.asarray(dt.scores, np.float64)[order]
    boxes = clip_boxes(np.asarray(dt.boxes).reshape(-1, 4)[order], gt.width, gt.height)  # [D, 4]
    persons, ignores = _split(gt)
    iou = iou_matrix(boxes, persons)  # [D, P]
    absorbed = _inside_ignore(boxes, ignores)  # [D]
    taken = np.zeros(len(persons), bool)
    # 1: true positive, 0: false positive, -1: dropped (ignore region); what it is unless it takes a person
    status = np.where(absorbed, -1, 0).astype(np.int8)  # [D]
    could_match = np.flatnonzero(iou.max(axis=1) > IOU_THRESH) if len(persons) else []  # the loop skips the rest
    for d in could_match:  # ascending index = descending score
        free = np.where(taken, -np.inf, iou[d])  # [P]
        best = int(np.argmax(free))  # argmax: the first on ties
        if free[best] > IOU_THRESH:
            taken[best], status[d] = True, 1
    keep = status >= 0
    return scores[keep], status[keep] == 1


def _ranked_hits(gts: Sequence[ImageGT], dts: Sequence[ImageDT]) -> np.ndarray:
    """bool [N]: whether each kept detection of all images is a true positive, by descending score (ties: the
    image order of ``gts``, then the per-image order of :func:`match_image`)."""
    matched = [match_image(gt, dt) for gt, dt in zip(gts, dts)]
    scores = np.concatenate([np.zeros(0)] + [s for s, _ in matched])
    hits = np.concatenate([np.zeros(0, bool)] + [h for _, h in matched])
    return hits[np.argsort(-scores, kind="stable")]


def average_precision(hits: np.ndarray, num_persons: int) -> tuple[float, float]:
    """(AP, final recall) of the ranked list ``hits`` (bool [N]) against ``num_persons`` ground truths.

    AP is the trapezoid rule over the raw (recall, precision) points, the first point included as it is (no
    added (0, 1) point, no envelope): 0.0 for fewer than two points. No detection: (0.0, 0.0).
    """
    if len(hits) == 0:
        return 0.0, 0.0
    tp = np.cumsum(hits)  # [N]
    recall = tp / num_persons
    precision = tp / np.arange(1, len(hits) + 1)
    ap = np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2)
    return float(ap), float(recall[-1])


def log_average_miss_rate(hits: np.ndarray, num_persons: int, num_images: int) -> float:
    """MR^-2: exp(mean(log(miss rate))) at the 9 FPPI_REFERENCES, each the miss rate at the first point of the
    ranked list whose FPPI >= the reference (the last point if none reaches it). A miss rate of 0 gives 0.0;
    no detection at all gives 1.0 (the toolkit has no answer there: every miss rate is 1)."""
    if len(hits) == 0:
        return 1.0
    tp = np.cumsum(hits)  # [N]
    fppi = np.cumsum(~hits) / num_images  # [N], non-decreasing
    miss_rate = 1.0 - tp / num_persons
    at = np.minimum(np.searchsorted(fppi, FPPI_REFERENCES, side="left"), len(hits) - 1)  # first fppi >= ref
    with np.errstate(divide="ignore"):  # log(0) = -inf -> exp = 0: a perfect detector
        return float(np.exp(np.mean(np.log(miss_rate[at]))))


def max_weight_matching(iou: np.ndarray) -> np.ndarray:
    """[D, P] IoU -> int [k, 2] (detection, person) pairs of a maximum-weight bipartite matching over the pairs
    with IoU > 0.5, weighted by IoU. Pairs at or below 0.5 get weight 0 for scipy and are then left out, which
    leaves the maximum weight unchanged (all other weights are positive)."""
    weights = np.where(iou > IOU_THRESH, iou, 0.0)  # [D, P]
    if weights.size == 0:
        return np.zeros((0, 2), np.int64)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = weights[rows, cols] > 0
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)


def ji_counts(gt: ImageGT, dt: ImageDT, score_thresh: float) -> tuple[int, int, int]:
    """(k, m, n) of one image at one JI threshold: k matched pairs; m persons and n detections (score >
    ``score_thresh``) left once the unmatched ones with IoA > 0.5 (over themselves) to an ignore region are
    removed."""
    keep = np.asarray(dt.scores, np.float64) > score_thresh
    boxes = clip_boxes(np.asarray(dt.boxes).reshape(-1, 4)[keep], gt.width, gt.height)  # [D', 4]
    persons, ignores = _split(gt)
    pairs = max_weight_matching(iou_matrix(boxes, persons))  # [k, 2]
    free_dt = np.ones(len(boxes), bool)
    free_dt[pairs[:, 0]] = False
    free_gt = np.ones(len(persons), bool)
    free_gt[pairs[:, 1]] = False
    n = len(boxes) - int(_inside_ignore(boxes[free_dt], ignores).sum())
    m = len(persons) - int(_inside_ignore(persons[free_gt], ignores).sum())
    return len(pairs), m, n


def jaccard_index(gts: Sequence[ImageGT], dts: Sequence[ImageDT]) -> float:
    """JI: the best over JI_THRESHOLDS of the mean of k / (m + n - k + 1e-6) over the images where m or n is
    not 0 (0.0 where no image has any)."""
    best = 0.0
    for thresh in JI_THRESHOLDS:
        ratios = [k / (m + n - k + EPS) for k, m, n in (ji_counts(gt, dt, thresh) for gt, dt in zip(gts, dts))
                  if m or n]
        if ratios:
            best = max(best, float(np.mean(ratios)))
    return best


def crowd_metrics(gts: Sequence[ImageGT], dts: Sequence[ImageDT]) -> dict[str, float]:
    """{"AP", "mMR", "JI", "recall"} as fractions, for the images ``gts`` (every one counts, with or without
    detections) and their detections ``dts`` (aligned with ``gts``; an image without detections: empty arrays).

    Raises ValueError if the lists differ in length or there is no person to find (AP and recall undefined).
    """
    if len(gts) != len(dts):
        raise ValueError(f"{len(gts)} ground-truth images but {len(dts)} detection entries: give one per image.")
    num_persons = int(sum((~np.asarray(gt.ignore, bool)).sum() for gt in gts))
    if num_persons == 0:
        raise ValueError(f"The ground truth of {len(gts)} image(s) holds no person (only ignore regions, or no box): "
                         "AP, MR^-2 and recall are undefined.")
    hits = _ranked_hits(gts, dts)
    ap, recall = average_precision(hits, num_persons)
    return {"AP": ap, "mMR": log_average_miss_rate(hits, num_persons, len(gts)), "JI": jaccard_index(gts, dts),
            "recall": recall}
