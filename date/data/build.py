"""From the ``dataset`` config node to train / val datasets (the data package's only config reader).

``DatasetConfig`` is the typed schema of the Hydra group ``dataset`` (conf/dataset/*.yaml);
date/config.py puts it into the top-level schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from date.choice import Choice

from .coco import CocoDetection
from .crowdhuman import CrowdHumanDetection
from .errors import DatasetError
from .synthetic import SyntheticParams, ensure_synthetic
from .synthetic.writer import annotation_name, image_folder
from .transforms import build_transforms

__all__ = ["DatasetConfig", "build_datasets", "build_val_dataset", "check_dataset_paths", "transform_sizes"]


class DatasetKind(Choice):
    synthetic = "synthetic"  # the embedded benchmark, generated into the cache
    synthetic_crowd = "synthetic_crowd"  # its crowd scenes, generated in CrowdHuman's odgt layout, read as crowdhuman
    coco = "coco"  # COCO 2017 layout under dataset.root
    coco_json = "coco_json"  # any COCO-format data: two annotation files and their image folders
    crowdhuman = "crowdhuman"  # CrowdHuman's odgt layout under dataset.root (date/data/crowdhuman.py)


@dataclass
class DatasetConfig(SyntheticParams):
    """Schema of the ``dataset`` group. Defaults: the CPU-sized synthetic preset (dataset=synthetic).

    The synthetic generation fields (seed, num_train, ..., noise) are SyntheticParams'; any change to
    them generates (and caches) a new dataset.
    """

    kind: DatasetKind = DatasetKind.synthetic  # set by the preset; leave it
    # coco: COCO 2017 layout under root; crowdhuman: the folder of annotation_{train,val}.odgt and Images/;
    # coco_json: the four paths below
    root: Optional[str] = None
    train_ann: Optional[str] = None  # training annotation JSON
    train_images: Optional[str] = None  # folder the training file_names are relative to
    val_ann: Optional[str] = None  # validation annotation JSON (needs annotations)
    val_images: Optional[str] = None  # folder the validation file_names are relative to
    # synthetic: where datasets are cached; crowdhuman: where the image sizes are cached when root is read-only
    # (else beside the odgt files); null: $DATE_DATA_CACHE, else ~/.cache/date
    cache_dir: Optional[str] = None
    # --- transforms (pixels)
    train_short_sizes: List[int] = field(default_factory=lambda: [128])  # 1x: short side drawn from this list
    max_size: int = 128  # cap on the long side, train and test
    test_short_size: int = 128  # evaluation short side
    # 3x: short sides (DETR's 480..800 step 32, scaled to 128 px)
    multiscale_short_sizes: List[int] = field(default_factory=lambda: [96, 104, 112, 120, 128])
    # 3x crop branch: short side before the crop (DETR's 400/500/600), then the [min, max] crop side (384..600)
    multiscale_crop_resize: List[int] = field(default_factory=lambda: [80, 96, 112])
    multiscale_crop_size: List[int] = field(default_factory=lambda: [64, 112])


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


def _root(cfg: Any, layout: str) -> Path:
    """``dataset.root`` of a preset reading a fixed layout under it, checked to be a folder."""
    _require(cfg, ["root"], str(cfg.kind))
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset.root={cfg.root} is not a folder. Point it at {layout}.")
    return root


def dataset_paths(cfg: Any, splits: Sequence[str] = ("train", "val")) -> dict[str, tuple[Path, Path]]:
    """{split: (annotation file, image folder)} for ``cfg.kind``; generates the synthetic splits asked for.

    Only the keys (and synthetic splits) of ``splits`` are needed: evaluation names the val split alone.
    """
    kind = cfg.kind
    if kind in GENERATED:
        params = synthetic_params(cfg)
        root = ensure_synthetic(params, cache_dir=cfg.cache_dir, splits=splits)
        if kind == "synthetic":  # COCO file names are relative to the dataset folder
            return {split: (root / annotation_name(params, split), root) for split in splits}
        return {split: (root / annotation_name(params, split), root / image_folder(params, split)) for split in splits}
    if kind == "coco":
        root = _root(cfg, "the COCO 2017 folder holding annotations/instances_{train,val}2017.json, train2017/ and "
                          "val2017/, or use dataset=coco_json with explicit paths for other layouts")
        return {split: (root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017")
                for split in splits}
    if kind == "crowdhuman":
        root = _root(cfg, "the CrowdHuman folder holding annotation_train.odgt, annotation_val.odgt and "
                          "Images/<ID>.jpg (the official layout)")
        return {split: (root / f"annotation_{split}.odgt", root / "Images") for split in splits}
    if kind == "coco_json":
        _require(cfg, [f"{split}_{key}" for split in splits for key in ("ann", "images")], kind)
        return {split: tuple(Path(getattr(cfg, f"{split}_{key}")).expanduser() for key in ("ann", "images"))
                for split in splits}  # type: ignore[misc]
    raise DatasetError(f"dataset.kind={kind!r} is not one of {', '.join(k.value for k in DatasetKind)}. Pick a preset: "
                       "dataset=synthetic | synthetic_large | synthetic_crowd | coco | coco_json | crowdhuman.")


# The generated presets and the scene each draws (SyntheticParams.scene)
GENERATED = {"synthetic": "shapes", "synthetic_crowd": "crowd"}
# The kinds read in CrowdHuman's odgt layout (by CrowdHumanDetection, with CrowdHuman's metrics)
ODGT_KINDS = ("crowdhuman", "synthetic_crowd")


def synthetic_params(cfg: Any) -> SyntheticParams:
    """The generation parameters of a generated preset's ``dataset`` node (its range checks: DatasetError), its
    scene checked against its kind."""
    params = SyntheticParams.from_config(cfg)
    if params.scene != GENERATED[cfg.kind]:
        preset = next(kind for kind, scene in GENERATED.items() if scene == params.scene)
        raise DatasetError(f"dataset.scene={params.scene} does not go with dataset.kind={cfg.kind}: the {params.scene} "
                           f"scenes are written for dataset={preset}. Use that preset (and leave dataset.scene as it "
                           "sets it).")
    return params


def _check_path(path: Path, key: str, *, folder: bool) -> None:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        what = "image folder" if folder else "annotation file"
        raise DatasetError(f"The {what} {path} (from {key}) does not exist. Check the path, or set "
                           f"{key}=<the right path> on the command line.")


def transform_sizes(cfg: Any) -> dict[str, Any]:
    """The transform sizes of a ``dataset`` node, as build_transforms takes them."""
    return dict(train_short_sizes=list(cfg.train_short_sizes), max_size=int(cfg.max_size),
                test_short_size=int(cfg.test_short_size), multiscale_short_sizes=list(cfg.multiscale_short_sizes),
                multiscale_crop_resize=list(cfg.multiscale_crop_resize),
                multiscale_crop_size=list(cfg.multiscale_crop_size))


def _checked_paths(cfg: Any, splits: Sequence[str]) -> dict[str, tuple[Path, Path]]:
    """{split: (annotation file, image folder)} of the ``dataset`` node, every one checked before any is read."""
    paths = dataset_paths(cfg, splits)
    prefix = "dataset." if cfg.kind == "coco_json" else f"dataset.root={_value(cfg, 'root')} -> "
    if cfg.kind in GENERATED:
        prefix = f"dataset={cfg.kind} (generated into {paths[splits[0]][0].parent}) -> "
    for split in splits:
        _check_path(paths[split][0], f"{prefix}{split}_ann", folder=False)
        _check_path(paths[split][1], f"{prefix}{split}_images", folder=True)
    return paths


def check_dataset_paths(cfg: Any) -> None:
    """The keys, annotation files and image folders of a coco / coco_json ``dataset`` node exist (DatasetError); a few
    stat calls, for checking a command before anything is created. The synthetic set needs none (it is generated)."""
    if cfg.kind not in GENERATED:
        _checked_paths(cfg, ["train", "val"])


def _dataset(cfg: Any, paths: tuple[Path, Path], *, train: bool, augmentation: str = "1x") -> CocoDetection:
    ann, images = paths
    transforms = build_transforms(train=train, augmentation=augmentation, **transform_sizes(cfg))
    if cfg.kind in ODGT_KINDS:
        return CrowdHumanDetection(ann_file=ann, image_dir=images, transforms=transforms, cache_dir=cfg.cache_dir)
    return CocoDetection(ann_file=ann, image_dir=images, transforms=transforms)


def build_val_dataset(cfg: Any) -> CocoDetection:
    """The validation split of the ``dataset`` node (evaluation alone: the training split is neither
    generated, read nor needs its keys set). Raises DatasetError."""
    return _dataset(cfg, _checked_paths(cfg, ["val"])["val"], train=False)


def build_datasets(cfg: Any, augmentation: str = "1x") -> tuple[CocoDetection, CocoDetection]:
    """Build and validate the (train, val) datasets of the ``dataset`` config node.

    ``augmentation`` ("1x" | "3x") picks the training recipe (schedule.augmentation). Everything is
    validated here, before training: paths, JSON, ids, image files. Raises DatasetError.
    """
    paths = _checked_paths(cfg, ["train", "val"])
    train = _dataset(cfg, paths["train"], train=True, augmentation=augmentation)
    val = _dataset(cfg, paths["val"], train=False)
    if train.label_to_category_id != val.label_to_category_id:
        raise DatasetError(
            f"The categories of {train.ann_file} (ids {train.label_to_category_id}) and {val.ann_file} (ids "
            f"{val.label_to_category_id}) differ, so labels would mean different classes. Use annotation "
            "files with the same 'categories' list."
        )
    return train, val
