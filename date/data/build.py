"""From the ``dataset`` config node to train / val datasets (the data package's only config reader).

``DatasetConfig`` is the typed schema of the Hydra group ``dataset`` (conf/dataset/*.yaml);
date/config.py puts it into the top-level schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from .coco import CocoDetection
from .errors import DatasetError
from .loader import build_eval_loader, build_train_loader
from .transforms import build_transforms

__all__ = ["DatasetConfig", "build_datasets", "build_train_loader", "build_eval_loader", "load_dataset_config"]

KINDS = ("synthetic", "coco", "coco_json")


@dataclass
class DatasetConfig:
    """Flat schema of the ``dataset`` group; defaults are the CPU-sized synthetic preset."""

    kind: str = "synthetic"  # synthetic | coco | coco_json
    # coco: COCO 2017 layout under root; coco_json: the four paths below
    root: Optional[str] = None
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    val_ann: Optional[str] = None
    val_images: Optional[str] = None
    # synthetic: cache folder (null: $DATE_DATA_CACHE, else ~/.cache/date) and generation parameters
    cache_dir: Optional[str] = None
    seed: int = 0
    num_train: int = 192
    num_val: int = 96
    image_size: int = 128
    num_classes: int = 6
    min_objects: int = 3
    max_objects: int = 12
    min_object_size: float = 16.0
    max_object_size: float = 128.0
    max_aspect_ratio: float = 2.0
    cluster_prob: float = 0.2
    min_cluster_size: float = 16.0
    min_visible: float = 0.5
    min_inside: float = 0.5
    border_prob: float = 0.25
    max_distractors: int = 3
    noise: float = 8.0
    # transforms (pixels): 1x / eval
    train_short_sizes: List[int] = field(default_factory=lambda: [128])
    max_size: int = 128
    test_short_size: int = 128
    # transforms: 3x (DETR-style multi-scale + crop)
    multiscale_short_sizes: List[int] = field(default_factory=lambda: [96, 104, 112, 120, 128])
    multiscale_crop_resize: List[int] = field(default_factory=lambda: [80, 96, 112])
    multiscale_crop_size: List[int] = field(default_factory=lambda: [64, 112])
    # FCOS scale ranges (max(l, t, r, b) boundaries in input pixels) of P3..P7
    size_of_interest: List[float] = field(default_factory=lambda: [8.0, 16.0, 32.0, 64.0])


def _value(cfg: Any, key: str) -> Any:
    """``cfg.key``, or None when unset (also for OmegaConf's mandatory ``???`` values)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg) and OmegaConf.is_missing(cfg, key):
            return None
    except ImportError:  # pragma: no cover
        pass
    return getattr(cfg, key, None)


def _require(cfg: Any, keys: Sequence[str], kind: str) -> None:
    missing = [k for k in keys if not _value(cfg, k)]
    if missing:
        example = " ".join(f"dataset.{k}=/path/..." for k in missing)
        raise DatasetError(
            f"dataset={kind} needs {', '.join('dataset.' + k for k in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not set. Pass them on the command line, e.g. "
            f"`python -m date.train dataset={kind} {example}`."
        )


def dataset_paths(cfg: Any) -> tuple[Path, Path, Path, Path]:
    """(train_ann, train_images, val_ann, val_images) for ``cfg.kind``; generates the synthetic set."""
    kind = cfg.kind
    if kind == "synthetic":
        # imported here so that `python -m date.data.synthetic` does not find it imported already
        from .synthetic import SyntheticParams, ensure_synthetic

        root = ensure_synthetic(SyntheticParams.from_config(cfg), cache_dir=cfg.cache_dir)
        return root / "instances_train.json", root, root / "instances_val.json", root
    if kind == "coco":
        _require(cfg, ["root"], kind)
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise DatasetError(
                f"dataset.root={cfg.root} is not a folder. Point it at the COCO 2017 folder holding "
                "annotations/instances_{train,val}2017.json, train2017/ and val2017/, or use "
                "dataset=coco_json with explicit paths for other layouts."
            )
        return (root / "annotations" / "instances_train2017.json", root / "train2017",
                root / "annotations" / "instances_val2017.json", root / "val2017")
    if kind == "coco_json":
        keys = ["train_ann", "train_images", "val_ann", "val_images"]
        _require(cfg, keys, kind)
        return tuple(Path(getattr(cfg, k)).expanduser() for k in keys)  # type: ignore[return-value]
    raise DatasetError(f"dataset.kind={kind!r} is not one of {', '.join(KINDS)}. Pick a preset: "
                       "dataset=synthetic | synthetic_large | coco | coco_json.")


def _check_path(path: Path, key: str, *, folder: bool) -> None:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        what = "image folder" if folder else "annotation file"
        raise DatasetError(f"The {what} {path} (from {key}) does not exist. Check the path, or set "
                           f"{key}=<the right path> on the command line.")


def build_datasets(cfg: Any, augmentation: str = "1x") -> tuple[CocoDetection, CocoDetection]:
    """Build and validate the (train, val) datasets of the ``dataset`` config node.

    ``augmentation`` ("1x" | "3x") picks the training recipe (schedule.augmentation). Everything is
    validated here, before training: paths, JSON, ids, image files. Raises DatasetError.
    """
    if augmentation not in ("1x", "3x"):
        raise DatasetError(f"augmentation={augmentation!r}: expected '1x' or '3x' (schedule.augmentation).")
    train_ann, train_images, val_ann, val_images = dataset_paths(cfg)
    prefix = "dataset." if cfg.kind == "coco_json" else f"dataset.root={_value(cfg, 'root')} -> "
    for path, key, folder in ((train_ann, "train_ann", False), (train_images, "train_images", True),
                              (val_ann, "val_ann", False), (val_images, "val_images", True)):
        _check_path(path, prefix + key, folder=folder)
    sizes = dict(
        train_short_sizes=list(cfg.train_short_sizes), max_size=int(cfg.max_size),
        test_short_size=int(cfg.test_short_size), multiscale_short_sizes=list(cfg.multiscale_short_sizes),
        multiscale_crop_resize=list(cfg.multiscale_crop_resize),
        multiscale_crop_size=list(cfg.multiscale_crop_size),
    )
    train = CocoDetection(ann_file=train_ann, image_dir=train_images,
                          transforms=build_transforms(train=True, augmentation=augmentation, **sizes))
    val = CocoDetection(ann_file=val_ann, image_dir=val_images,
                        transforms=build_transforms(train=False, **sizes))
    if train.label_to_category_id != val.label_to_category_id:
        raise DatasetError(
            f"The categories of {train_ann} (ids {train.label_to_category_id}) and {val_ann} (ids "
            f"{val.label_to_category_id}) differ, so labels would mean different classes. Use annotation "
            "files with the same 'categories' list."
        )
    return train, val


def load_dataset_config(preset: str = "synthetic", overrides: Sequence[str] = ()) -> Any:
    """The ``dataset`` node of conf/dataset/<preset>.yaml over the schema, plus ``key=value`` overrides
    (for scripts and the synthetic CLI; training composes it with Hydra instead)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(DatasetConfig)
    path = Path(__file__).resolve().parents[2] / "conf" / "dataset" / f"{preset}.yaml"
    if path.is_file():
        cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
    elif preset != "synthetic":
        raise DatasetError(f"No dataset preset {path}. Presets: synthetic, synthetic_large, coco, coco_json.")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
