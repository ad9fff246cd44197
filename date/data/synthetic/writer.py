"""Writing one split of the synthetic benchmark as a COCO-format dataset: its PNG images and its annotation file.

Layout written under ``root``::

    instances_<split>.json   <split>/000000.png ...

Worker processes do not change the output: every image is drawn from its own seed (see render.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator

from PIL import Image
from tqdm import tqdm

from .params import CLASSES, GENERATOR_VERSION, SyntheticParams
from .render import render_image


def _render_and_save(task: tuple[SyntheticParams, str, int, str]) -> list[tuple[int, list[int]]]:
    p, split, index, path = task
    image, objects = render_image(p, split, index)
    # Fixed compression and no metadata chunks: byte-identical files for identical pixels.
    Image.fromarray(image).save(path, format="PNG", compress_level=1)
    return objects


def _coco_annotations(objects: list[tuple[int, list[int]]], image_id: int, first_id: int) -> list[dict]:
    """COCO annotations of one image's (label, [x0, y0, x1, y1]) objects, numbered from ``first_id``."""
    annotations = []
    for label, (x0, y0, x1, y1) in objects:
        w, h = x1 - x0, y1 - y0
        annotations.append({
            "id": first_id + len(annotations),
            "image_id": image_id,
            "category_id": label + 1,
            "bbox": [float(x0), float(y0), float(w), float(h)],
            "area": float(w * h),
            "iscrowd": 0,
        })
    return annotations


def write_split(p: SyntheticParams, split: str, root: Path, *, workers: int, progress: bool) -> None:
    """Render ``split`` into the new folder ``root / split`` and write ``root / instances_<split>.json``."""
    n = p.num_train if split == "train" else p.num_val
    (root / split).mkdir()
    names = [f"{split}/{i:06d}.png" for i in range(n)]
    tasks = [(p, split, i, str(root / names[i])) for i in range(n)]
    bar = tqdm(total=n, desc=f"synthetic {split}", unit="img", disable=not progress, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            import multiprocessing

            pool = stack.enter_context(multiprocessing.get_context().Pool(workers))
            results: Iterator = pool.imap(_render_and_save, tasks, chunksize=16)
        else:
            results = map(_render_and_save, tasks)
        images, annotations = [], []
        for i, objects in enumerate(results):
            images.append({"id": i + 1, "file_name": names[i], "width": p.image_size, "height": p.image_size})
            # ids start at 1: COCOeval treats id 0 as "unmatched"
            annotations += _coco_annotations(objects, image_id=i + 1, first_id=len(annotations) + 1)
            bar.update(1)
    bar.close()
    dataset = {
        "info": {"description": "DATE synthetic detection benchmark", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c + 1, "name": CLASSES[c].name, "supercategory": CLASSES[c].shape} for c in range(p.num_classes)
        ],
    }
    (root / f"instances_{split}.json").write_text(json.dumps(dataset, separators=(",", ":")))
