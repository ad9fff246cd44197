"""Evaluate a checkpoint alone: ``python -m date.evaluate checkpoint=<model_final.pth | last.pth>``.

The detector and dataset configs are read from the checkpoint (``dataset=<preset> dataset.key=...``
replaces the dataset). Prints the COCO table and the 12 numbers; bad input ends with a message and
exit code 2, as in date.train.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from date import checkpoint as ckpt
from date.coco_eval import evaluate
from date.config import ConfigError, amp_setting
from date.data.build import DatasetConfig, build_datasets, build_eval_loader
from date.engine import resolve_device, use_amp
from date.logging_utils import errors_as_messages
from date.modeling.build import build_detector
from date.train import INPUT_ERRORS

log = logging.getLogger("date.evaluate")


def _freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm2d -> FrozenBatchNorm2d in place (pretrained backbones are trained with frozen BN)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_batchnorm(child)


def load_model(saved: dict, *, num_classes: int) -> nn.Module:
    """The detector described by a checkpoint's config, with the checkpoint's weights."""
    config = saved.get("config") or {}
    if not all(k in config for k in ("backbone", "assigner", "model")):
        raise ckpt.CheckpointError("The checkpoint holds no training config (backbone / assigner / model); "
                                   "only checkpoints written by date.train can be evaluated.")
    backbone = OmegaConf.create({**config["backbone"], "weights": "none"})  # the checkpoint brings the weights
    model = build_detector(backbone=backbone, assigner=OmegaConf.create(config["assigner"]),
                           model=OmegaConf.create(config["model"]), num_classes=num_classes)
    if config["backbone"]["weights"] != "none":
        _freeze_batchnorm(model.backbone.body)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise ckpt.CheckpointError(f"The checkpoint's weights do not fit the model of its own config: "
                                   f"{str(exc).splitlines()[0]}") from None
    return model


def checkpoint_dataset_config(saved: dict) -> DictConfig:
    """The ``dataset`` node a checkpoint was trained with, over the schema's defaults."""
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), (saved.get("config") or {}).get("dataset", {}))


def run(cfg: DictConfig) -> dict[str, float]:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("No checkpoint given: pass checkpoint=<path of model_final.pth or last.pth>.")
    saved = ckpt.load(Path(cfg.checkpoint).expanduser())
    dataset_cfg = cfg.dataset if cfg.dataset is not None else checkpoint_dataset_config(saved)
    _, val_set = build_datasets(dataset_cfg)
    model = load_model(saved, num_classes=val_set.num_classes)
    device = resolve_device(cfg.device)
    model.to(device)
    stats, _ = evaluate(model=model, loader=build_eval_loader(val_set, batch_size=cfg.batch_size,
                                                              num_workers=cfg.num_workers),
                        coco_gt=val_set.coco, label_to_category_id=val_set.label_to_category_id, device=device,
                        amp=use_amp(amp_setting(cfg.amp), device))
    print("  ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(stats, indent=1))
    return stats


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, float]:
    with errors_as_messages(dict.fromkeys(INPUT_ERRORS, 2)):
        return run(cfg)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
