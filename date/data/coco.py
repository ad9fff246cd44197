"""A COCO-format detection dataset, validated up front.

Dimensions: K = boxes (non-crowd annotations) of an image, J = its crowd regions.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools.coco import COCO

from date.runtime.logs import examples

from .errors import DatasetError

logger = logging.getLogger(__name__)


def read_annotation_file(ann_file: Path) -> dict:
    """Parse a COCO JSON file; DatasetError naming the file (and line) when missing or malformed."""
    try:
        text = ann_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"Annotation file {ann_file} does not exist. Check the dataset paths "
                           "(dataset.root, or dataset.train_ann / dataset.val_ann).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"Cannot read annotation file {ann_file}: {e}. Check that it is a readable "
                           "UTF-8 COCO-format JSON file.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"Annotation file {ann_file} is not valid JSON: {e.msg} at line {e.lineno}, "
                           f"column {e.colno}. Fix or regenerate the file (a truncated download or copy "
                           "is the usual cause).") from None
    if not isinstance(data, dict):
        raise DatasetError(f"Annotation file {ann_file} holds a JSON {type(data).__name__}, not a COCO "
                           "object with 'images', 'annotations' and 'categories' lists.")
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def clean_annotations(data: dict, ann_file: Path, image_dir: Path) -> dict:
    """Check a parsed COCO dict and return a cleaned copy (what the dataset and COCOeval use).

    Raises DatasetError for structural problems (missing lists, duplicate or unknown ids, malformed
    entries). Drops degenerate boxes (w or h <= 0, non-finite, or nothing left inside the image) with
    one logged count; clips boxes to the image; fills missing ``iscrowd`` (0) and ``area`` (box area);
    renumbers annotation ids from 1 if any is missing, repeated or < 1 (COCOeval reads id 0 as
    "unmatched"). Image width / height missing from the JSON are read from the image header.
    """
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"Annotation file {ann_file} has no '{key}' list: it is not COCO-format "
                               "detection data (needs 'images', 'annotations' and 'categories').")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DatasetError(f"Annotation file {ann_file}: 'annotations' must be a list.")
    if not data["images"]:
        raise DatasetError(f"Annotation file {ann_file} lists no images: the dataset is empty. Check "
                           "that the file is the right split and was exported completely.")
    if not data["categories"]:
        raise DatasetError(f"Annotation file {ann_file} has an empty 'categories' list; detection needs "
                           "at least one category.")

    images = _checked_images(data["images"], ann_file, image_dir)
    cat_ids = _checked_category_ids(data["categories"], ann_file)
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    _check_references(anns, sizes, cat_ids, ann_file)
    cleaned = _clean_boxes(anns, sizes, ann_file)
    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["images"], out["annotations"] = images, cleaned
    out.setdefault("info", {})  # some pycocotools versions' loadRes read it unconditionally
    out.setdefault("licenses", [])
    return out


def _checked_images(entries: list, ann_file: Path, image_dir: Path) -> list[dict]:
    """Copies of the 'images' entries: unique integer ids, files present, width / height known."""
    images, seen = [], set()
    for i, im in enumerate(entries):
        if not isinstance(im, dict) or not _is_int(im.get("id")) or not isinstance(im.get("file_name"), str):
            raise DatasetError(f"Annotation file {ann_file}: images[{i}] needs an integer 'id' and a string "
                               f"'file_name', got {str(im)[:200]}.")
        if im["id"] in seen:
            raise DatasetError(f"Annotation file {ann_file}: image id {im['id']} appears twice in 'images'. "
                               "Image ids must be unique.")
        seen.add(im["id"])
        images.append(dict(im))
    _check_inside(images, ann_file, image_dir)
    missing = [im["file_name"] for im in images if not os.path.isfile(image_dir / im["file_name"])]
    if missing:
        raise DatasetError(f"{len(missing)} image file(s) listed in {ann_file} are missing under {image_dir}: "
                           f"{examples([str(image_dir / m) for m in missing], 3)}. Check the image folder "
                           "setting (dataset.root / dataset.*_images) or restore the files.")
    for im in images:
        if not (_is_number(im.get("width")) and _is_number(im.get("height")) and im["width"] > 0 and im["height"] > 0):
            im["width"], im["height"] = _image_size(image_dir / im["file_name"])
    return images


def _leaves_folder(file_name: str) -> bool:
    """Lexically outside its folder (absolute, or ``..`` after normalising); symlinks inside are the user's choice."""
    return os.path.isabs(file_name) or Path(os.path.normpath(file_name)).parts[:1] == ("..",)


def _check_inside(images: list[dict], ann_file: Path, image_dir: Path) -> None:
    """Every file_name stays under ``image_dir``, so that no split reads (and trains on) files from elsewhere."""
    outside = [im["file_name"] for im in images if _leaves_folder(im["file_name"])]
    if outside:
        raise DatasetError(f"Annotation file {ann_file}: {len(outside)} 'file_name'(s) in 'images' point outside the "
                           f"image folder {image_dir}: {examples(outside, 3)}. "
                           "file_names must be relative paths inside the folder (no absolute path, no '..'): rewrite "
                           "them relative to it, or point dataset.root / dataset.*_images at a folder that holds them.")


def _checked_category_ids(entries: list, ann_file: Path) -> set[int]:
    cat_ids = set()
    for i, c in enumerate(entries):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise DatasetError(f"Annotation file {ann_file}: categories[{i}] needs an integer 'id', got "
                               f"{str(c)[:200]}.")
        if c["id"] in cat_ids:
            raise DatasetError(f"Annotation file {ann_file}: category id {c['id']} appears twice in "
                               "'categories'. Category ids must be unique.")
        cat_ids.add(c["id"])
    return cat_ids


def _check_references(anns: list, sizes: dict, cat_ids: set[int], ann_file: Path) -> None:
    """Every annotation names a listed image and a listed category."""
    bad_image = [a.get("image_id") for a in anns if isinstance(a, dict) and a.get("image_id") not in sizes]
    if bad_image:
        raise DatasetError(f"Annotation file {ann_file}: annotations refer to image_id(s) that are not in "
                           f"'images': {examples(bad_image)}. The file is inconsistent (a filtered 'images' "
                           "list?): re-export it or remove those annotations.")
    bad_cat = [a.get("category_id") for a in anns if isinstance(a, dict) and a.get("category_id") not in cat_ids]
    if bad_cat:
        raise DatasetError(f"Annotation file {ann_file}: annotations use category_id(s) that are not in "
                           f"'categories' ({examples(sorted(cat_ids))}): {examples(bad_cat)}. Add those "
                           "categories or remove the annotations.")


def _clean_boxes(anns: list, sizes: dict, ann_file: Path) -> list[dict]:
    """Boxes clipped to their image, degenerate ones dropped (one warning), iscrowd / area / ids filled in."""
    cleaned, degenerate, outside = [], 0, 0
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise DatasetError(f"Annotation file {ann_file}: annotations[{i}] is not an object.")
        box = a.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DatasetError(f"Annotation file {ann_file}: annotation {repr(a['id']) if 'id' in a else f'#{i}'} "
                               f"(image_id {a['image_id']!r}) has a malformed 'bbox' {str(box)[:100]}; expected "
                               "[x, y, width, height] numbers.")
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            degenerate += 1
            continue
        W, H = sizes[a["image_id"]]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(W)), min(y + h, float(H))
        if x1 <= x0 or y1 <= y0:
            outside += 1
            continue
        a = dict(a)
        a["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        a["iscrowd"] = int(bool(a.get("iscrowd", 0)))
        if not _is_number(a.get("area")):
            a["area"] = (x1 - x0) * (y1 - y0)
        cleaned.append(a)
    if degenerate or outside:
        logger.warning("%s: dropped %d degenerate box(es) (width or height <= 0, or NaN/inf) and %d box(es) "
                       "lying entirely outside their image, of %d annotations.", ann_file, degenerate, outside,
                       len(anns))
    ids = [a.get("id") for a in cleaned]
    if not all(_is_int(v) and v >= 1 for v in ids) or len(set(ids)) != len(ids):
        logger.info("%s: annotation ids missing, repeated or < 1; renumbered from 1.", ann_file)
        for k, a in enumerate(cleaned):
            a["id"] = k + 1
    return cleaned


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, after EXIF orientation."""
    image = open_image(path)
    return image.size


def open_image(path: Path) -> Image.Image:
    """Load an image as RGB with its EXIF orientation applied; DatasetError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale to 8 bit, not clip
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(arr / max(arr.max(), 1) * 255, 0, 255).astype(np.uint8))
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"Cannot read image file {path}: {e}. Replace or re-download the file, or "
                           "remove its entry from the annotation file.") from None


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of one COCO-format split.

    ``dataset[i]`` (or ``dataset[(i, seed)]``, as the training sampler passes it: ``seed`` drives the
    random augmentation of this sample, so results do not depend on the DataLoader workers) returns
    ``(image, target)``: the transformed image (float32 Tensor[3, H, W]; uint8 if ``transforms`` is
    None) and a dict with ``boxes`` float32 Tensor[K, 4] xyxy pixels, ``labels`` int64 Tensor[K] in
    [0, num_classes), ``crowd_boxes`` float32 Tensor[J, 4], ``image_id`` int, ``orig_size`` (H0, W0),
    ``image_size`` (H, W) after transforms.

    Attributes: ``num_classes``, ``label_to_category_id`` (label -> COCO category id, sorted by id),
    ``class_names``, ``coco`` (pycocotools COCO over the cleaned annotations, the ground truth for
    COCOeval), ``ann_file``, ``image_dir``, ``ids`` (image ids in file order).

    Everything that can be checked without decoding images is checked in the constructor
    (raises DatasetError). ``require_annotations``: raise if the split has no box at all. ``data``: the
    COCO dict itself, already parsed or built in memory (date.data.crowdhuman); None: read ``ann_file``.
    """

    def __init__(
        self,
        *,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms: Optional[Callable[[Image.Image, dict], tuple[torch.Tensor, dict]]] = None,
        require_annotations: bool = True,
        data: Optional[dict] = None,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        data = clean_annotations(read_annotation_file(self.ann_file) if data is None else data, self.ann_file,
                                 self.image_dir)
        if require_annotations and not any(not a["iscrowd"] for a in data["annotations"]):
            raise DatasetError(f"Annotation file {self.ann_file} has no usable (non-crowd) box annotations, "
                               "so it can be neither trained on nor evaluated. Point the split at an "
                               "annotated file (test-dev style files without annotations cannot be used).")
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
            self.coco.createIndex()

        self.label_to_category_id: list[int] = sorted(c["id"] for c in data["categories"])
        self.category_id_to_label = {cid: i for i, cid in enumerate(self.label_to_category_id)}
        names = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]}
        self.class_names = [names[cid] for cid in self.label_to_category_id]
        self.num_classes = len(self.label_to_category_id)

        self.ids = [im["id"] for im in data["images"]]
        self._files = [im["file_name"] for im in data["images"]]
        per_image: dict[int, list[dict]] = {i: [] for i in self.ids}
        for a in data["annotations"]:
            per_image[a["image_id"]].append(a)
        # Precomputed per image: boxes [K, 4] xyxy, labels [K], crowd boxes [J, 4] (numpy, cheap to pickle)
        self._boxes, self._labels, self._crowd = [], [], []
        for image_id in self.ids:
            anns = per_image[image_id]
            xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
            self._boxes.append(np.array([xyxy(a["bbox"]) for a in anns if not a["iscrowd"]], np.float32).reshape(-1, 4))
            self._labels.append(np.array([self.category_id_to_label[a["category_id"]] for a in anns if not a["iscrowd"]],
                                         np.int64))
            self._crowd.append(np.array([xyxy(a["bbox"]) for a in anns if a["iscrowd"]], np.float32).reshape(-1, 4))

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._files[index]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        image = open_image(self.image_path(index))
        W0, H0 = image.size
        clip = np.array([W0, H0, W0, H0], np.float32)
        target = {
            # clipped again in case the file's size disagrees with the JSON's (e.g. EXIF rotation)
            "boxes": torch.from_numpy(np.minimum(self._boxes[index], clip)),
            "labels": torch.from_numpy(self._labels[index]),
            "crowd_boxes": torch.from_numpy(np.minimum(self._crowd[index], clip)),
            "image_id": int(self.ids[index]),
            "orig_size": (H0, W0),
        }
        if self.transforms is None:
            from torchvision.transforms.v2.functional import pil_to_tensor

            target["image_size"] = (H0, W0)
            return pil_to_tensor(image), target
        with torch.random.fork_rng(devices=[]):  # per-sample RNG without touching the caller's
            # the CPU generator alone, as torch.manual_seed seeds it: the transforms draw on the CPU, and
            # torch.manual_seed's lazy seeding of CUDA/XPU/MTIA formats a stack trace per call (2 ms a sample)
            torch.default_generator.manual_seed(int(seed))
            return self.transforms(image, target)
