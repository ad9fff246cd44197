"""Detect objects in image files: ``python -m date.predict checkpoint=<ckpt> images=<folder | files> out=<dir>``.

``images`` is a folder (its files with one of IMAGE_EXTENSIONS, not recursive), one file, or a list of both
(``images=[a.jpg,more/]``). The detector and its evaluation pipeline come from the checkpoint, through
date.inference (short side to ``dataset.test_short_size``, long side <= ``max_size``, ImageNet normalisation,
padding to 128): images at the evaluation size get the detections date.coco_eval scores.
The checkpoint does not store its classes: their ids and names are the "categories" of the val annotation file of
the checkpoint's dataset (date.data.build.dataset_paths; a synthetic one is generated if not cached), sorted by
id as date.data.coco.CocoDetection numbers them. Consecutive images of one size are detected together,
``batch_size`` at a time (one resize per batch, as date.inference.Inference takes them).

Writes into ``out`` (a new or empty folder, or an earlier prediction's; checked before any image is read, as
date.runtime.outputs says; created only then), and nowhere else:
- predict.log: this command's log;
- detections.json: COCO results, every detection the checkpoint's detector keeps (its ``model.score_thresh``),
  as date.coco_eval.coco_records writes the evaluation's: image_id, category_id (the training data's),
  bbox [x, y, w, h] in the file's pixels, score;
- images.json: {"images": [{id, file_name, width, height}], "categories": [{id, name}]}, ids from 1 in input
  order, so that ``COCO("images.json").loadRes("detections.json")`` loads the pair;
- <stem>.png per image: its detections scoring >= ``score_thresh`` drawn with "<category name> <score>".

Bad input (no or a damaged checkpoint, one of another version of the suite, no image found, inputs sharing a
stem) ends with a one-paragraph message and exit code 2 before any image is read, as in date.evaluate. An image
that cannot be read is a warning naming it; the others are processed and written, then the run ends with
exit code 1 and one paragraph naming every skipped file, so that scripts notice.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from date.coco_eval import coco_records
from date import cli
from date.config import ConfigError, PredictConfig, amp_setting, check_ranges
from date.data.build import dataset_paths
from date.data.coco import open_image, read_annotation_file
from date.data.errors import DatasetError
from date.errors import INPUT_ERRORS
from date.inference import Inference
from date.modeling.build import checkpoint_config
from date.runtime import checkpoint as ckpt
from date.runtime.distributed import autocast_dtype, resolve_device
from date.runtime.logs import errors_as_messages, log_to_file, quiet_third_party
from date.runtime.outputs import check_output_folder

log = logging.getLogger("date.predict")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # what a folder is searched for


class UnreadableImagesError(RuntimeError):
    """Some input images could not be read; the others were processed (exit code 1, not 2: there are outputs)."""


class Input(NamedTuple):
    image_id: int
    path: Path
    pixels: torch.Tensor  # uint8 [3, H, W], RGB


def run(cfg: DictConfig) -> None:
    """Everything is checked before an image is read or a file written; see the module docstring."""
    check_settings(cfg)
    files = image_files(cfg.images)
    out = check_output_folder(cfg.out or time.strftime("outputs/predict/%Y-%m-%d_%H-%M-%S"), key="out",
                              kind="the detections and drawn images", is_own=is_prediction_folder,
                              overwrite=cfg.overwrite)
    check_stems(files, out)
    device = resolve_device(cfg.device)
    checkpoint = Path(cfg.checkpoint).expanduser()
    saved = ckpt.load(checkpoint)
    categories = checkpoint_categories(saved)
    inference = Inference.from_checkpoint(checkpoint, label_to_category_id=[c["id"] for c in categories],
                                          saved=saved, device=device,
                                          amp_dtype=autocast_dtype(amp_setting(cfg.amp), device))
    out.mkdir(parents=True, exist_ok=True)
    log_to_file(out / "predict.log")
    predictor = Predictor(inference=inference, categories=categories, score_thresh=cfg.score_thresh, out=out)
    images, results, unreadable = predictor.run(files, batch_size=cfg.batch_size)
    ckpt.write_atomic(out / "detections.json", json.dumps(results))
    ckpt.write_atomic(out / "images.json", json.dumps({"images": images, "categories": categories}, indent=1))
    log.info("%d detections on %d images: %s (COCO results of %s); drawn images: %s/<stem>.png", len(results),
             len(images), out / "detections.json", out / "images.json", out)
    if unreadable:
        raise UnreadableImagesError(
            f"{len(unreadable)} of {len(files)} images could not be read and were skipped: {', '.join(unreadable)} "
            f"(the warnings above say why). The other {len(images)} were processed: their detections and drawn "
            f"images are in {out}. Replace or remove the unreadable files and rerun on them.")


def check_settings(cfg: DictConfig) -> None:
    """The required keys are set and the numbers in range; ConfigError listing every problem."""
    problems = [f"{key}: not set (pass {key}=...)" for key in ("checkpoint", "images")
                if OmegaConf.is_missing(cfg, key)]
    if not 0.0 <= cfg.score_thresh <= 1.0:
        problems.append(f"score_thresh={cfg.score_thresh}: expected a number in [0, 1]")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size}: expected >= 1")
    if problems:
        raise ConfigError("Invalid configuration: " + "; ".join(problems) + ". Usage: python -m date.predict "
                          "checkpoint=<model_final.pth> images=<folder | file | [files]> out=<dir>.")


def is_prediction_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier prediction (its images.json): its files are replaced without asking."""
    try:
        listing = json.loads((folder / "images.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(listing, dict) and {"images", "categories"} <= set(listing)


def image_files(images: Any) -> list[Path]:
    """The files of ``images`` (folders: their IMAGE_EXTENSIONS files, sorted), in input order."""
    entries = [str(e) for e in images] if OmegaConf.is_list(images) or isinstance(images, (list, tuple)) \
        else [str(images)]
    files: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"images={entry}: no such file or folder. Pass a folder of images, an image file, or a "
                              "list of them (images=[a.jpg,b/]).")
    if not files:
        raise ConfigError(f"No image found in images={', '.join(entries)}: the folder holds no file ending in "
                          f"{', '.join(IMAGE_EXTENSIONS)} (case-insensitive; subfolders are not searched). Point "
                          "images= at the folder that holds the images, or list the files (images=[a.jpg,b.jpg]).")
    return files


def check_stems(files: Sequence[Path], out: Path) -> None:
    """Every drawn <out>/<stem>.png is distinct and overwrites no input; ConfigError naming the clash."""
    seen: dict[str, Path] = {}
    for path in files:
        drawn = out / f"{path.stem}.png"
        if drawn.resolve() == path.resolve():
            raise ConfigError(f"out={out} holds the input {path}: its drawn image would overwrite it. Pass another "
                              "out= folder.")
        if path.stem in seen:
            raise ConfigError(f"The inputs {seen[path.stem]} and {path} share the name {path.stem!r}: both drawn "
                              f"images would be {drawn}. Rename one of them, or predict them in separate runs.")
        seen[path.stem] = path


def checkpoint_categories(saved: dict) -> list[dict]:
    """[{"id", "name"}] of the checkpoint's training data, sorted by id (label order, as CocoDetection numbers
    them), from the "categories" of its dataset's val annotation file (the checkpoint does not store them)."""
    ann_file, _ = dataset_paths(checkpoint_config(saved).dataset, ["val"])["val"]
    entries = read_annotation_file(ann_file).get("categories")
    if not isinstance(entries, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in entries):
        raise DatasetError(f"Annotation file {ann_file} has no valid 'categories' list (objects with an integer "
                           "'id'), which names the checkpoint's classes. Restore the file the checkpoint was "
                           "trained with.")
    return sorted(({"id": c["id"], "name": str(c.get("name", c["id"]))} for c in entries), key=lambda c: c["id"])


@dataclass
class Predictor:
    """Reads, detects and draws images, batch by batch (see the module docstring)."""

    inference: Inference  # the checkpoint's detector, evaluation resize, device and autocast
    categories: list[dict]
    score_thresh: float
    out: Path

    def run(self, files: Sequence[Path], *, batch_size: int) -> tuple[list[dict], list[dict], list[str]]:
        """(COCO image entries, COCO results, the unreadable files) of ``files``."""
        images: list[dict] = []
        results: list[dict] = []
        unreadable: list[str] = []
        batch: list[Input] = []
        bar = tqdm(files, desc="predict", unit="img", dynamic_ncols=True, disable=not sys.stderr.isatty())
        with logging_redirect_tqdm():
            for image_id, path in enumerate(bar, start=1):
                try:
                    item = Input(image_id, path, F.pil_to_tensor(open_image(path)))
                except DatasetError as exc:
                    log.warning("Skipped: %s", exc)
                    unreadable.append(str(path))
                    continue
                images.append({"id": image_id, "file_name": str(path), "width": item.pixels.shape[-1],
                               "height": item.pixels.shape[-2]})
                if batch and (len(batch) == batch_size or item.pixels.shape != batch[0].pixels.shape):
                    results += self.detect_and_draw(batch)
                    batch = []
                batch.append(item)
            if batch:
                results += self.detect_and_draw(batch)
        return images, results, unreadable

    def detect_and_draw(self, batch: Sequence[Input]) -> list[dict]:
        """The COCO results of a batch of same-size images; writes each one's drawn <stem>.png."""
        pixels = torch.stack([item.pixels for item in batch])  # [B, 3, H0, W0] uint8
        detections = self.inference(F.to_dtype(pixels, torch.float32, scale=True))  # boxes in the files' pixels
        records = coco_records(detections, [item.image_id for item in batch], [c["id"] for c in self.categories])
        for item in batch:
            drawn = self.draw(item.pixels, [r for r in records if r["image_id"] == item.image_id])
            F.to_pil_image(drawn).save(self.out / f"{item.path.stem}.png")
        return records

    def draw(self, pixels: torch.Tensor, records: Sequence[dict]) -> torch.Tensor:
        """``pixels`` with the boxes scoring >= score_thresh, labelled "<category name> <score>"."""
        kept = [r for r in records if r["score"] >= self.score_thresh]
        if not kept:
            return pixels
        names = {c["id"]: c["name"] for c in self.categories}
        boxes = box_convert(torch.tensor([r["bbox"] for r in kept]), "xywh", "xyxy")
        labels = [f"{names[r['category_id']]} {r['score']:.2f}" for r in kept]
        return draw_bounding_boxes(pixels, boxes, labels=labels, width=max(1, min(pixels.shape[-2:]) // 200))


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    with errors_as_messages({**dict.fromkeys(INPUT_ERRORS, 2), UnreadableImagesError: 1, ckpt.SaveError: 1}):
        run(cfg)



ENTRYPOINT = cli.Entrypoint(
    module="date.predict", config_name="predict", schema=PredictConfig, check_config=check_ranges,
    usage="python -m date.predict checkpoint=<model_final.pth> images=<folder | file | [a.jpg,b/]> [out=<dir>]",
    about="Detects objects in image files with a checkpoint of date.train, through the evaluation's pipeline, "
          "and writes into out= (only there): detections.json (COCO results), images.json, predict.log and one "
          "drawn <stem>.png per image.")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    cli.main(ENTRYPOINT, main)
