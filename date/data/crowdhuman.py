"""CrowdHuman (``dataset=crowdhuman dataset.root=DIR``): the official odgt layout read directly, turned into a
COCO dict in memory, so that the training path (items, transforms, label mapping) and COCOeval work on it as on
COCO, and kept as it is written for CrowdHuman's own metrics (date.crowd_metrics).

Layout under root: ``annotation_train.odgt``, ``annotation_val.odgt`` (date.data.odgt reads and checks them) and
``Images/<ID>.jpg``. One class, ``person`` (category id 1). Each full-body box ``fbox`` becomes a COCO ``bbox``,
clipped to the image by date.data.coco (CrowdHuman's boxes may extend past it); an ignore region (``tag`` not
``person``, or ``extra.ignore`` not 0) becomes an ``iscrowd`` box: no loss inside it in training, a crowd
region for COCOeval. A box with width or height <= 0 is left out (date.data.odgt warns once, naming the lines).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from date.crowd_metrics import ImageDT, crowd_metrics

from .coco import CocoDetection
from .odgt import GtRecord, ground_truth, image_sizes, read_ground_truth

CATEGORIES = [{"id": 1, "name": "person"}]


def odgt_to_coco(records: Sequence[GtRecord], sizes: dict[str, tuple[int, int]]) -> dict:
    """A COCO detection dict of the ground-truth records: image ids 1..N in file order (``file_name`` <ID>.jpg,
    the ID kept as ``crowdhuman_id``), one annotation per fbox with w and h > 0, ``iscrowd`` = ignore region."""
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        width, height = sizes[record.id]
        images.append({"id": image_id, "file_name": f"{record.id}.jpg", "width": width, "height": height,
                       "crowdhuman_id": record.id})
        for (x, y, w, h), ignore in zip(record.boxes.tolist(), record.ignore.tolist()):
            if w > 0 and h > 0:  # the others were reported by read_ground_truth; they cannot be trained on
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [x, y, w, h], "iscrowd": int(ignore)})
    return {"images": images, "annotations": annotations, "categories": list(CATEGORIES)}


class CrowdHumanDetection(CocoDetection):
    """One CrowdHuman split: a :class:`CocoDetection` (same items, transforms and attributes) built from an odgt.

    Args:
        ann_file: the split's .odgt file.
        image_dir: the folder of ``<ID>.jpg`` (``root/Images``).
        cache_dir: the data cache (dataset.cache_dir; null: $DATE_DATA_CACHE or ~/.cache/date), where the image
            sizes are cached when the annotation file's folder is read-only.

    Extra attributes, in the order of ``ids`` (image id i + 1 is line record i): ``crowdhuman_ids`` (the odgt
    IDs) and ``crowd_gt`` (date.crowd_metrics.ImageGT per image: the boxes as written, unclipped, ignore flags
    and image size), the ground truth of CrowdHuman's metrics.
    """

    def __init__(self, *, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                 transforms: Optional[Callable[[Image.Image, dict], tuple[torch.Tensor, dict]]] = None,
                 require_annotations: bool = True, cache_dir: Optional[str] = None) -> None:
        records = read_ground_truth(Path(ann_file))
        sizes = image_sizes(records, Path(image_dir), Path(ann_file), cache_dir=cache_dir)
        super().__init__(ann_file=ann_file, image_dir=image_dir, transforms=transforms,
                         require_annotations=require_annotations, data=odgt_to_coco(records, sizes))
        self.crowdhuman_ids = [record.id for record in records]
        self.crowd_gt = ground_truth(records, sizes)

    def crowd_scores(self, results: Sequence[dict], image_ids: Sequence[int]) -> dict[str, float]:
        """CrowdHuman's AP, MR^-2, JI and recall (fractions; date.crowd_metrics) of COCO result records
        (``image_id``, ``bbox`` [x, y, w, h], ``score``; the order of predict_coco) on the images ``image_ids``
        (every one counts, with or without detections), against the odgt ground truth as written."""
        ids = sorted(set(image_ids))
        per_image: dict[int, tuple[list, list]] = {i: ([], []) for i in ids}
        for r in results:
            x, y, w, h = r["bbox"]
            per_image[r["image_id"]][0].append([x, y, x + w, y + h])
            per_image[r["image_id"]][1].append(r["score"])
        dts = [ImageDT(boxes=np.array(boxes, np.float64).reshape(-1, 4), scores=np.array(scores, np.float64))
               for boxes, scores in per_image.values()]
        return crowd_metrics([self.crowd_gt[i - 1] for i in ids], dts)  # image id i is odgt record i - 1
