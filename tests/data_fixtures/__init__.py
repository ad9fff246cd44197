"""Small COCO-format datasets written into a temporary folder for the data tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 11, "name": "bird"}]


def write_image(path: Path, *, width: int = 64, height: int = 48, mode: str = "RGB", value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = np.full((height, width, channels), value, np.uint8).squeeze()
    Image.fromarray(arr, mode=mode).save(path)
    return path


def write_coco(
    root: Path,
    *,
    name: str = "train",
    images: Optional[Sequence[dict]] = None,
    annotations: Optional[Sequence[dict]] = None,
    categories: Sequence[dict] = CATEGORIES,
    write_images: bool = True,
    extra: Optional[dict[str, Any]] = None,
) -> tuple[Path, Path]:
    """Write ``root/<name>.json`` and the images under ``root/<name>/``; return (ann_file, image_dir).

    Defaults: 3 images of 64 x 48, one box on each of the first two, the third without annotations.
    """
    image_dir = root / name
    if images is None:
        images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in (1, 2, 3)]
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 5, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 11, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        ]
    if write_images:
        for im in images:
            write_image(image_dir / im["file_name"], width=im.get("width", 64), height=im.get("height", 48))
    image_dir.mkdir(parents=True, exist_ok=True)
    data = {"images": list(images), "annotations": list(annotations), "categories": list(categories), **(extra or {})}
    ann_file = root / f"{name}.json"
    ann_file.write_text(json.dumps(data, indent=1))
    return ann_file, image_dir
