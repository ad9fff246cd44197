"""Writing one split of the synthetic benchmark: its images and its annotation file.

Layout written under ``root``: the shapes scenes as a COCO dataset, the crowd scenes in CrowdHuman's odgt layout
(the one date.data.crowdhuman reads)::

    shapes:  instances_<split>.json   <split>/000000.png ...
    crowd:   annotation_<split>.odgt  Images/<split>-000000.jpg ...

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

from .crowd import render_crowd
from .params import CLASSES, GENERATOR_VERSION, SyntheticParams
from .render import render_image


def annotation_name(p: SyntheticParams, split: str) -> str:
    """The annotation file of ``split``, moved into the dataset folder last (a split is complete once it exists)."""
    return f"annotation_{split}.odgt" if p.scene == "crowd" else f"instances_{split}.json"


def image_folder(p: SyntheticParams, split: str) -> str:
    """The folder of ``split``'s images (the crowd layout keeps both splits in one, as CrowdHuman does)."""
    return "Images" if p.scene == "crowd" else split


def _image_name(p: SyntheticParams, split: str, index: int) -> str:
    return f"{split}-{index:06d}.jpg" if p.scene == "crowd" else f"{index:06d}.png"


def _render_and_save(task: tuple[SyntheticParams, str, int, str]) -> list:
    p, split, index, path = task
    if p.scene == "crowd":  # CrowdHuman's images are JPEGs; fixed quality, no metadata: byte-identical files
        image, gtboxes = render_crowd(p, split, index)
        Image.fromarray(image).save(path, format="JPEG", quality=95)
        return gtboxes
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
    """Render ``split`` into the new folder ``root / image_folder(p, split)`` and write its annotation file
    ``root / annotation_name(p, split)``."""
    n = p.num_train if split == "train" else p.num_val
    (root / image_folder(p, split)).mkdir()
    names = [f"{image_folder(p, split)}/{_image_name(p, split, i)}" for i in range(n)]
    tasks = [(p, split, i, str(root / names[i])) for i in range(n)]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            import multiprocessing

            pool = stack.enter_context(multiprocessing.get_context().Pool(workers))
            results: Iterator = pool.imap(_render_and_save, tasks, chunksize=16)
        else:
            results = map(_render_and_save, tasks)
        results = list(tqdm(results, total=n, desc=f"synthetic {split}", unit="img", disable=not progress,
                            file=sys.stderr))
    if p.scene == "crowd":
        _write_odgt(root / annotation_name(p, split), names, results, p.image_size)
    else:
        _write_coco(root / annotation_name(p, split), names, results, p)


def _write_odgt(path: Path, names: list[str], results: list[list[dict]], size: int) -> None:
    """One JSON line per image, as CrowdHuman's annotation files (ID = the file name without .jpg)."""
    lines = [json.dumps({"ID": Path(name).stem, "gtboxes": gtboxes, "height": size, "width": size},
                        separators=(",", ":")) for name, gtboxes in zip(names, results)]
    path.write_text("\n".join(lines) + "\n")


def _write_coco(path: Path, names: list[str], results: list[list[tuple[int, list[int]]]], p: SyntheticParams) -> None:
    images, annotations = [], []
    for i, objects in enumerate(results):
        images.append({"id": i + 1, "file_name": names[i], "width": p.image_size, "height": p.image_size})
        # ids start at 1: COCOeval treats id 0 as "unmatched"
        annotations += _coco_annotations(objects, image_id=i + 1, first_id=len(annotations) + 1)
    dataset = {
        "info": {"description": "DATE synthetic detection benchmark", "version": str(GENERATOR_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c + 1, "name": CLASSES[c].name, "supercategory": CLASSES[c].shape} for c in range(p.num_classes)
        ],
    }
    path.write_text(json.dumps(dataset, separators=(",", ":")))
