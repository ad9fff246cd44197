"""Data: the synthetic benchmark, COCO-format datasets, detection transforms and loaders.

Entry points: :func:`build_datasets` (config node -> validated train / val datasets),
:func:`build_train_loader` / :func:`build_eval_loader`. Every bad input raises :class:`DatasetError`.
"""

from .errors import DatasetError
from .build import DatasetConfig, build_datasets, load_dataset_config
from .coco import CocoDetection
from .loader import build_eval_loader, build_train_loader, collate

__all__ = [
    "DatasetError", "DatasetConfig", "build_datasets", "load_dataset_config", "CocoDetection",
    "build_train_loader", "build_eval_loader", "collate",
]
