"""Evaluate a checkpoint alone: ``python -m date.evaluate checkpoint=<model_final.pth | last.pth>``.

The detector and dataset configs are read from the checkpoint (``dataset=<preset> dataset.key=...``
replaces the dataset); only the validation split is built. Prints the 12 COCO numbers; bad input ends
with a message and exit code 2, as in date.train.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from date.coco_eval import evaluate
from date.config import ConfigError, amp_setting
from date.data.build import build_val_dataset
from date.data.loader import build_eval_loader
from date.errors import INPUT_ERRORS
from date.modeling.build import checkpoint_config, detector_from_checkpoint
from date.runtime import checkpoint as ckpt
from date.runtime.distributed import autocast_dtype, resolve_device
from date.runtime.logs import errors_as_messages

log = logging.getLogger("date.evaluate")


def run(cfg: DictConfig) -> dict[str, float]:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("No checkpoint given: pass checkpoint=<path of model_final.pth or last.pth>.")
    saved = ckpt.load(Path(cfg.checkpoint).expanduser())
    dataset_cfg = cfg.dataset if cfg.dataset is not None else checkpoint_config(saved).dataset
    val_set = build_val_dataset(dataset_cfg)
    model = detector_from_checkpoint(saved, num_classes=val_set.num_classes)
    device = resolve_device(cfg.device)
    model.to(device)
    stats, _ = evaluate(model=model, loader=build_eval_loader(val_set, batch_size=cfg.batch_size,
                                                              num_workers=cfg.num_workers),
                        coco_gt=val_set.coco, label_to_category_id=val_set.label_to_category_id, device=device,
                        amp_dtype=autocast_dtype(amp_setting(cfg.amp), device))
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
