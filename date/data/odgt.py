"""CrowdHuman's .odgt files, read and checked line by line: the ground truth (``annotation_{train,val}.odgt``),
detection files (the format CrowdHuman tools write), and the image sizes the odgt lacks (read from the image
headers once, cached beside the annotation file). No torch: date.crowdhuman_eval uses it on its own.

Dimensions: G = ground-truth boxes of a record, D = its detections.

A ground-truth line: ``{"ID": "273271,c9db000d5146c15", "gtboxes": [{"tag": "person", "fbox": [x, y, w, h],
"vbox": ..., "hbox": ..., "extra": {"ignore": 0}, "head_attr": {...}}, ...]}`` (optionally ``"height"``,
``"width"``); the image is ``Images/<ID>.jpg``. The full-body ``fbox`` is the benchmark's box. A box whose
``tag`` is not ``person`` or whose ``extra.ignore`` is not 0 is an ignore region (the toolkit's test).
A detection line: ``{"ID": ..., "dtboxes": [{"box": [x, y, w, h], "score": s}, ...]}``; other keys are allowed.

Bad input raises DatasetError naming the file and line. A box with width or height <= 0 is kept in the records
(the metrics count it as the toolkit does: a person no detection can match, an ignore region that absorbs
nothing) and left out of training (date.data.crowdhuman); one warning names where they are.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from date.crowd_metrics import ImageDT, ImageGT

from .errors import DatasetError
from .cache_dir import resolve_cache_dir

logger = logging.getLogger(__name__)

PERSON = "person"  # the one class; any other tag (mask, ...) is an ignore region
EXIF_ORIENTATION = 0x0112  # values 5-8 rotate by 90 degrees: open_image (date.data.coco) swaps width and height


@dataclass(frozen=True)
class GtRecord:
    """One ground-truth line: ``line`` (1-based), ``id``, ``boxes`` float [G, 4] the fboxes as written
    [x, y, w, h], ``ignore`` bool [G], ``width`` / ``height`` when the line gives them (else None)."""

    line: int
    id: str
    boxes: np.ndarray
    ignore: np.ndarray
    width: Optional[float] = None
    height: Optional[float] = None


def _first(items: Sequence[str], n: int = 3) -> str:
    """The first ``n`` items for a message, with the count when there are more."""
    return "; ".join(items[:n]) + (f"; ... ({len(items)} in all)" if len(items) > n else "")


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line; DatasetError naming the file:line of a bad one."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"The odgt file {path} does not exist. Check the path (gt= / dt= of "
                           "date.crowdhuman_eval; dataset.root holds annotation_{train,val}.odgt).") from None
    except OSError as e:
        raise DatasetError(f"Cannot read the odgt file {path}: {e}.") from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text.rstrip("\r\n"))  # columns then count within the line
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}:{number} is not valid JSON ({e.msg}, column {e.colno}). An .odgt file "
                                       "holds one JSON record per line: fix or regenerate that line (a truncated "
                                       "download or copy is the usual cause).") from None
                if not isinstance(record, dict):
                    raise DatasetError(f"{path}:{number} holds a JSON {type(record).__name__}, not a record object "
                                       "such as {\"ID\": ..., \"gtboxes\": [...]}.")
                yield number, record
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): is it an .odgt file?") from None


def _record_id(record: dict, where: str, boxes_key: str) -> str:
    """The record's ID, checked (it names Images/<ID>.jpg), and that ``boxes_key`` is a list."""
    if "ID" not in record:
        raise DatasetError(f"{where}: record without 'ID'. Each line needs 'ID' (the image is Images/<ID>.jpg) and "
                           f"'{boxes_key}'.")
    image_id = record["ID"]
    if not isinstance(image_id, str) or not image_id or image_id in (".", "..") or "/" in image_id or "\\" in image_id:
        raise DatasetError(f"{where}: 'ID' {image_id!r} is not an image name: it must be a non-empty string without "
                           "'/' (the image is Images/<ID>.jpg).")
    if not isinstance(record.get(boxes_key), list):
        raise DatasetError(f"{where}: record {image_id!r} has no '{boxes_key}' list (got {str(record.get(boxes_key))[:80]}). "
                           f"Each line needs 'ID' and '{boxes_key}' (an image without boxes: \"{boxes_key}\": []).")
    return image_id


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _box(entry: Any, key: str, where: str) -> list[float]:
    box = entry.get(key) if isinstance(entry, dict) else None
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise DatasetError(f"{where}: '{key}' must be [x, y, w, h] (4 finite numbers), got {str(box)[:100]}"
                           f"{'' if isinstance(entry, dict) else ' (the entry is not an object)'}.")
    return [float(v) for v in box]


def _size(record: dict, key: str, where: str) -> Optional[float]:
    value = record.get(key)
    if value is None:
        return None
    if not (_is_number(value) and value > 0):
        raise DatasetError(f"{where}: '{key}' must be a positive number of pixels, got {value!r}.")
    return float(value)


def _gt_record(record: dict, number: int, path: Path, degenerate: list[str]) -> GtRecord:
    where = f"{path}:{number}"
    image_id = _record_id(record, where, "gtboxes")
    boxes, ignore = [], []
    for k, entry in enumerate(record["gtboxes"]):
        box = _box(entry, "fbox", f"{where}: record {image_id!r}, gtboxes[{k}]")
        if not isinstance(entry.get("tag"), str):
            raise DatasetError(f"{where}: record {image_id!r}, gtboxes[{k}] has no string 'tag' (person, mask, ...), "
                               f"got {entry.get('tag')!r}.")
        extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
        boxes.append(box)
        ignore.append(entry["tag"] != PERSON or extra.get("ignore", 0) != 0)
        if box[2] <= 0 or box[3] <= 0:
            degenerate.append(f"line {number} gtboxes[{k}] {box}")
    return GtRecord(line=number, id=image_id, boxes=np.array(boxes, np.float64).reshape(-1, 4),
                    ignore=np.array(ignore, bool), width=_size(record, "width", where),
                    height=_size(record, "height", where))


def read_ground_truth(path: Path) -> list[GtRecord]:
    """The records of a ground-truth .odgt file, in file order; DatasetError naming file:line on bad input."""
    path = Path(path)
    records, first_line, degenerate = [], {}, []
    for number, record in _json_lines(path):
        rec = _gt_record(record, number, path, degenerate)
        if rec.id in first_line:
            raise DatasetError(f"{path}:{number}: ID {rec.id!r} was already on line {first_line[rec.id]}. Each image "
                               "has one line: merge the two records.")
        first_line[rec.id] = number
        records.append(rec)
    if not records:
        raise DatasetError(f"The odgt file {path} holds no record: the split is empty. Check that it is the right "
                           "file and was copied completely.")
    if degenerate:
        logger.warning("%s: %d box(es) with width or height <= 0 (%s): left out of training; the CrowdHuman metrics "
                       "keep them as the toolkit does (a person no detection can match, an ignore region that "
                       "absorbs nothing). Fix or delete them in the file to silence this.", path, len(degenerate),
                       _first(degenerate))
    return records


def read_detections(path: Path, gt_ids: Sequence[str], gt_path: Path) -> list[ImageDT]:
    """The detections of a .odgt detection file, one ImageDT per ground-truth image (in the order of ``gt_ids``;
    empty where the file has no line for it). DatasetError naming file:line on bad input, an ID that is not in
    the ground truth, or an ID on two lines."""
    path = Path(path)
    index = {image_id: i for i, image_id in enumerate(gt_ids)}
    out = [ImageDT(boxes=np.zeros((0, 4)), scores=np.zeros(0)) for _ in gt_ids]
    first_line: dict[str, int] = {}
    for number, record in _json_lines(path):
        where = f"{path}:{number}"
        image_id = _record_id(record, where, "dtboxes")
        if image_id not in index:
            raise DatasetError(f"{where}: ID {image_id!r} is not in the ground truth {gt_path}. Detections must be of "
                               "the ground truth's images: check that both files are of the same split.")
        if image_id in first_line:
            raise DatasetError(f"{where}: ID {image_id!r} was already on line {first_line[image_id]}. Write one line "
                               "per image.")
        first_line[image_id] = number
        boxes, scores = [], []
        for k, entry in enumerate(record["dtboxes"]):
            boxes.append(_box(entry, "box", f"{where}: dtboxes[{k}]"))
            if not _is_number(entry.get("score")):
                raise DatasetError(f"{where}: dtboxes[{k}] needs a finite number 'score', got {entry.get('score')!r}.")
            scores.append(float(entry["score"]))
        xywh = np.array(boxes, np.float64).reshape(-1, 4)  # [D, 4]
        out[index[image_id]] = ImageDT(boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                                       scores=np.array(scores, np.float64))
    return out


def ground_truth(records: Sequence[GtRecord], sizes: dict[str, tuple[float, float]]) -> list[ImageGT]:
    """The records as the metrics take them: fboxes to xyxy, with the (width, height) of ``sizes``."""
    return [ImageGT(boxes=np.concatenate([r.boxes[:, :2], r.boxes[:, :2] + r.boxes[:, 2:]], axis=1),
                    ignore=r.ignore, width=sizes[r.id][0], height=sizes[r.id][1]) for r in records]


def sizes_from_records(records: Sequence[GtRecord], path: Path) -> dict[str, tuple[float, float]]:
    """{ID: (width, height)} as the ground-truth lines give them; DatasetError naming the first line without."""
    for r in records:
        if r.width is None or r.height is None:
            raise DatasetError(f"{path}:{r.line}: record {r.id!r} has no 'height' and 'width' (the metrics clip boxes "
                               "to the image). Add them to every line, or pass images=DIR (the folder of <ID>.jpg) to "
                               "read them from the image headers.")
    return {r.id: (r.width, r.height) for r in records}


# ---- image sizes from the image headers, cached


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as date.data.coco.open_image shows it (EXIF rotation applied), read from the
    header alone (PIL decodes no pixel until asked)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"Cannot read the header of image {path}: {e}. Replace or re-download the file.") from None
    return width, height


def _check_images(records: Sequence[GtRecord], image_dir: Path, ann_file: Path) -> None:
    missing = [f"{ann_file.name}:{r.line} {r.id} -> {image_dir / (r.id + '.jpg')}" for r in records
               if not os.path.isfile(image_dir / f"{r.id}.jpg")]
    if missing:
        raise DatasetError(f"{len(missing)} ID(s) of {ann_file} have no image in {image_dir}: "
                           f"{_first(missing)}. Point dataset.root at the folder holding Images/<ID>.jpg "
                           "(date.crowdhuman_eval: images= at the folder of <ID>.jpg), or restore the files.")


def _cache_files(ann_file: Path, digest: str, cache_dir: Optional[str]) -> list[Path]:
    """Where the sizes may be cached: beside the annotation file, else (a read-only dataset) in the data cache."""
    return [ann_file.with_name(ann_file.name + ".sizes.json"),
            resolve_cache_dir(cache_dir) / "crowdhuman" / f"{digest}.sizes.json"]


def _read_cache(path: Path, key: dict) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("sizes") if isinstance(data, dict) and data.get("key") == key else None


def _write_cache(paths: Sequence[Path], key: dict, sizes: dict, ann_file: Path) -> None:
    for path in paths:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"key": key, "sizes": sizes}))
            os.replace(tmp, path)  # atomic: DDP ranks reading the same split write the same file
            return
        except OSError as e:
            tmp.unlink(missing_ok=True)
            logger.info("cannot cache image sizes in %s (%s)", path, e)
    logger.warning("image sizes of %s could not be cached (tried %s): they are read again next time",
                   ann_file, ", ".join(map(str, paths)))


def image_sizes(records: Sequence[GtRecord], image_dir: Path, ann_file: Path, *,
                cache_dir: Optional[str] = None) -> dict[str, tuple[int, int]]:
    """{ID: (width, height)} of the images ``image_dir/<ID>.jpg``, from their headers, with a progress bar, once:
    then cached in ``<ann_file>.sizes.json`` (or in the data cache when that folder is read-only), keyed by the
    SHA-1 of the annotation file and the image folder. DatasetError naming file:line for a missing image."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    _check_images(records, image_dir, ann_file)
    digest = hashlib.sha1(ann_file.read_bytes()).hexdigest()
    key = {"sha1": digest, "images": str(image_dir.resolve())}
    paths = _cache_files(ann_file, digest, cache_dir)
    for path in paths:
        cached = _read_cache(path, key)
        if cached is not None and all(r.id in cached for r in records):
            return {r.id: tuple(cached[r.id]) for r in records}
    bar = tqdm(records, desc=f"image sizes {ann_file.name}", unit="img", file=sys.stderr, mininterval=1.0)
    sizes = {r.id: header_size(image_dir / f"{r.id}.jpg") for r in bar}
    _write_cache(paths, key, sizes, ann_file)
    return sizes
