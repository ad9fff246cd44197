"""Tiny CrowdHuman-layout datasets written into a temporary folder: odgt files and PIL-drawn JPEGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from PIL import Image, ImageDraw


def person(x: float, y: float, w: float, h: float, *, tag: str = "person", ignore: int = 0) -> dict:
    """A gtboxes entry as the official files write it (vbox / hbox / head_attr are not read: dummies)."""
    return {"tag": tag, "fbox": [x, y, w, h], "vbox": [x, y, w, h], "hbox": [x, y, min(w, 5), min(h, 5)],
            "extra": {"box_id": 0, "occ": 0, "ignore": ignore}, "head_attr": {"ignore": 0, "occ": 0, "unsure": 0}}


def write_jpeg(path: Path, width: int, height: int, boxes: Iterable[list[float]] = ()) -> Path:
    """A grey JPEG with the boxes drawn as filled rectangles (something to look at, nothing to learn)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    for x, y, w, h in boxes:
        if w > 0 and h > 0:
            draw.rectangle([x, y, x + w, y + h], fill=(220, 180, 120))
    image.save(path, quality=90)
    return path


def write_odgt(path: Path, records: Iterable[Any]) -> Path:
    """One line per record: dicts as JSON, strings as they are (to write malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# The default split contents: ID -> (width, height, gtboxes). IDs look like CrowdHuman's (with a comma).
TRAIN = {
    "273271,c9db000d5146c15": (80, 60, [person(10, 10, 20, 30), person(70, 20, 20, 30),  # the 2nd crosses x = 80
                                        person(30, 5, 20, 20, tag="mask", ignore=1),  # an ignore region
                                        person(0, 40, 10, 15, ignore=1)]),  # a person marked ignore
    "273275,2ae8c5e0bd8e84f": (64, 48, [person(5, 5, 30, 40)]),
}
VAL = {
    "284193,faa9000f2678b5e": (80, 60, [person(40, 10, 30, 45), person(-10, 0, 30, 50)]),  # the 2nd crosses x = 0
    "283554,35288000868e92d": (64, 48, [person(20, 8, 20, 35)]),
}


def write_crowdhuman(root: Path, train: Optional[dict] = None, val: Optional[dict] = None,
                     *, sizes_in_lines: bool = False) -> Path:
    """``root/annotation_{train,val}.odgt`` and ``root/Images/<ID>.jpg``; returns root. ``sizes_in_lines``: also
    write "width" / "height" into each line (what date.crowdhuman_eval's gt= needs without images=)."""
    for split, content in (("train", TRAIN if train is None else train), ("val", VAL if val is None else val)):
        records = []
        for image_id, (width, height, boxes) in content.items():
            write_jpeg(root / "Images" / f"{image_id}.jpg", width, height, [b["fbox"] for b in boxes])
            record = {"ID": image_id, "gtboxes": boxes}
            if sizes_in_lines:
                record.update(width=width, height=height)
            records.append(record)
        write_odgt(root / f"annotation_{split}.odgt", records)
    return root
