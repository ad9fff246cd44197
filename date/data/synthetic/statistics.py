"""Statistics of a COCO-format or odgt split (``python -m date.data.synthetic --stats``; any annotation file, not
only the synthetic benchmark's): objects, sizes, overlaps, and what the one-to-many branch gets from the training's own
FCOS assigner (date/assign/one_to_many.py) on each image's padded feature grids.

Legend: K = objects of an image, N = locations over all FPN levels.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from date.assign import FCOSAssigner
from date.box_ops import batched_pairwise_iou
from date.criterion import pad_targets
from date.data.crowdhuman import odgt_to_coco
from date.data.odgt import image_sizes, read_ground_truth
from date.modeling.detector import Locations

LEVELS = ("P3", "P4", "P5", "P6", "P7")
_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
# CrowdHuman's full-body boxes, as the CrowdHuman paper reports them: pairs per image at IoU >= 0.3 / 0.5 / 0.7
# (about 9 / 2.4 / 0.3), persons per image (22.6), and about 10% of the boxes ignore regions
CROWDHUMAN = {"pairs_per_image": {"iou>=0.3": 9.0, "iou>=0.5": 2.4, "iou>=0.7": 0.3}, "objects_per_image": 22.6,
              "ignore_share_pct": 10.0}


def fcos_level(extent: float, size_of_interest: Sequence[float]) -> int:
    """Index of the FCOS level whose range (lo, hi] holds ``extent`` = max(l, t, r, b)."""
    return int(sum(extent > b for b in size_of_interest))


def feature_locations(padded_hw: tuple[int, int], strides: Sequence[int]) -> Locations:
    """The detector's locations on a padded image of ``padded_hw``: centres at (i + 0.5) * stride of each
    level's (Hp / stride) x (Wp / stride) grid, P3 first (as DATEDetector places them)."""
    hp, wp = padded_hw
    points, per_point_strides, level_sizes = [], [], []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(hp // s), torch.arange(wp // s), indexing="ij")
        points.append((torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * s)  # [H_l * W_l, 2]
        per_point_strides.append(torch.full((len(points[-1]),), float(s)))
        level_sizes.append(len(points[-1]))
    return Locations(torch.cat(points), torch.cat(per_point_strides), level_sizes)


def o2m_positives(boxes: np.ndarray, image_hw: tuple[int, int], loc: Locations,
                  assigner: FCOSAssigner) -> tuple[list[int], list[int]]:
    """The positives ``assigner`` gives one image's ``boxes`` [K, 4] (x0, y0, x1, y1) at ``loc``, through the
    criterion's own target padding. Returns (positive locations per level, positives per object [K])."""
    target = {"boxes": torch.as_tensor(boxes), "labels": torch.zeros(len(boxes), dtype=torch.long),
              "image_size": image_hw}
    matched = assigner(None, None, loc, pad_targets([target], torch.device("cpu")))[0]  # [N]: gt index or -1
    per_level = [int((m >= 0).sum()) for m in matched.split(loc.level_sizes)]
    return per_level, torch.bincount(matched[matched >= 0], minlength=len(boxes)).tolist()


def _summary(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "q1": 0.0, "median": 0.0, "q3": 0.0}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"mean": round(float(np.mean(values)), 2), "q1": float(q1), "median": float(median), "q3": float(q3)}


@dataclass
class _Objects:
    """The objects of a loaded annotation file: each image's non-crowd boxes, and per-object counts."""

    boxes: dict[int, list[list[float]]]  # image id -> [[x0, y0, x1, y1], ...]
    image_hw: dict[int, tuple[int, int]]
    classes: dict[str, int]  # objects per class name
    per_level: list[int]  # objects per FCOS level of their centre location
    max_sides: list[float] = field(default_factory=list)
    aspects: list[float] = field(default_factory=list)  # w / h
    crowd: int = 0  # iscrowd regions (not objects)
    border: int = 0  # objects touching the image border


def _read_objects(data: dict, size_of_interest: Sequence[float]) -> _Objects:
    image_hw = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    names = {c["id"]: c["name"] for c in data["categories"]}
    found = _Objects(boxes={image_id: [] for image_id in image_hw}, image_hw=image_hw,
                     classes={name: 0 for name in names.values()}, per_level=[0] * (len(size_of_interest) + 1))
    for a in data["annotations"]:
        if a.get("iscrowd", 0):
            found.crowd += 1
            continue
        x, y, w, h = a["bbox"]
        found.boxes[a["image_id"]].append([x, y, x + w, y + h])
        found.classes[names[a["category_id"]]] += 1
        found.per_level[fcos_level(max(w, h) / 2, size_of_interest)] += 1
        found.max_sides.append(max(w, h))
        found.aspects.append(w / h)
        H, W = image_hw[a["image_id"]]
        found.border += x <= 0 or y <= 0 or x + w >= W or y + h >= H
    return found


def _all_o2m_positives(found: _Objects, assigner: FCOSAssigner, strides: Sequence[int],
                       size_divisibility: int) -> tuple[list[int], list[int]]:
    """(positive locations per level, positives of each object) over every image, each image padded as the
    training's batches pad it (to multiples of ``size_divisibility``)."""
    per_level, per_object = [0] * len(strides), []
    grids: dict[tuple[int, int], Locations] = {}  # the locations of each padded size
    for image_id, boxes in found.boxes.items():
        if not boxes:
            continue
        image_hw = found.image_hw[image_id]
        padded = tuple(math.ceil(s / size_divisibility) * size_divisibility for s in image_hw)
        if padded not in grids:
            grids[padded] = feature_locations(padded, strides)
        level_counts, object_counts = o2m_positives(np.asarray(boxes), image_hw, grids[padded], assigner)
        per_level = [p + c for p, c in zip(per_level, level_counts)]
        per_object += object_counts
    return per_level, per_object


def _read_annotations(ann_file: Path) -> dict:
    """The COCO dict of a COCO JSON file, or of an odgt file (date.data.crowdhuman's conversion: fboxes as written,
    ignore regions as iscrowd; sizes from the records' height and width, else from the headers of ``Images/``)."""
    if ann_file.suffix != ".odgt":
        return json.loads(ann_file.read_text())
    records = read_ground_truth(ann_file)
    if all(r.width is not None and r.height is not None for r in records):
        sizes = {r.id: (int(r.width), int(r.height)) for r in records}
    else:
        sizes = image_sizes(records, ann_file.parent / "Images", ann_file)
    return odgt_to_coco(records, sizes)


def _box_pairs(found: _Objects) -> dict[str, int]:
    """Pairs of boxes of the same image at IoU >= each threshold."""
    pairs = dict.fromkeys(_IOU_THRESHOLDS, 0)
    for boxes in found.boxes.values():
        b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)  # [K, 4]
        iou = batched_pairwise_iou(b[None], b[None])[0]  # [K, K]
        iou = iou[tuple(torch.triu_indices(len(b), len(b), offset=1))]  # each pair once
        for t in _IOU_THRESHOLDS:
            pairs[t] += int((iou >= t).sum())
    return {f"iou>={t}": n for t, n in pairs.items()}


def describe(
    ann_file: str | os.PathLike,
    *,
    size_of_interest: Sequence[float],
    strides: Sequence[int] = (8, 16, 32, 64, 128),
    size_divisibility: int = 128,
    center_sampling_radius: Optional[float] = None,
) -> dict[str, Any]:
    """Statistics of a COCO-format split (or an odgt one: its full-body boxes as written, ignore regions apart).

    Two views of the FPN level usage: ``objects_per_level`` puts each object on the level of its
    centre location (extent max(w, h) / 2), ``positive_locations_per_level`` counts the positives of the
    training's FCOS assigner (FCOSAssigner with these ``size_of_interest``, ``strides`` and
    ``center_sampling_radius``: assigner.fcos_center_sampling) on the padded feature grids.
    ``o2m_positives_per_object`` (mean and quartiles) is what the one-to-many branch gets per object;
    ``objects_without_positive`` get none.
    """
    found = _read_objects(_read_annotations(Path(ann_file)), size_of_interest)
    assigner = FCOSAssigner(strides=tuple(strides), size_of_interest=tuple(size_of_interest),
                            center_sampling_radius=center_sampling_radius)
    positives, per_object = _all_o2m_positives(found, assigner, strides, size_divisibility)
    counts = [len(v) for v in found.boxes.values()]
    pairs = _box_pairs(found)
    n_obj, without = sum(counts), sum(c == 0 for c in per_object)
    return {
        "ann_file": str(ann_file),
        "images": len(counts),
        "objects": n_obj,
        "crowd_regions": found.crowd,
        "objects_per_image": {"min": min(counts, default=0), "mean": round(n_obj / max(1, len(counts)), 2),
                              "max": max(counts, default=0)},
        "images_without_objects": sum(c == 0 for c in counts),
        "classes": found.classes,
        "size_of_interest": list(size_of_interest),
        "objects_per_level": dict(zip(LEVELS, found.per_level)),
        "positive_locations_per_level": dict(zip(LEVELS, positives)),
        "o2m_positives_per_object": _summary(per_object),
        "objects_without_positive": without,
        "objects_without_positive_pct": round(100 * without / max(1, len(per_object)), 2),
        "max_side_px": {"min": min(found.max_sides, default=0),
                        "median": float(np.median(found.max_sides)) if found.max_sides else 0,
                        "max": max(found.max_sides, default=0)},
        "aspect_w_over_h": {"min": round(min(found.aspects, default=0), 3),
                            "max": round(max(found.aspects, default=0), 3)},
        "objects_touching_border": int(found.border),
        "same_image_box_pairs": pairs,
        "pairs_per_image": {k: round(v / max(1, len(counts)), 2) for k, v in pairs.items()},
        "ignore_share_pct": round(100 * found.crowd / max(1, n_obj + found.crowd), 1),
    }
