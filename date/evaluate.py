"""Evaluate a checkpoint alone: ``python -m date.evaluate checkpoint=<model_final.pth | last.pth> [out=eval.json]``.

The detector and dataset configs are read from the checkpoint (``dataset=<preset> dataset.key=...``
replaces the dataset; ``nms_thresh=`` an FCOS baseline's NMS IoU); only the validation split is built. Prints the
12 COCO numbers (and CrowdHuman's four on a CrowdHuman-format dataset) of the inference branch (``branch=o2m``:
of DATE's o2m branch with NMS, a diagnostic) and, with ``out=``, writes
them as JSON (atomically). Writes nothing else: no run dir, no log file (the log is the console's). Bad input
(the output path included: not the checkpoint, not a folder, writable) ends with a message and exit code 2
before the evaluation starts, as in date.train; a failed write of ``out`` with exit code 1.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from date.coco_eval import crowd_score, evaluate, inference_label
from date import cli
from date.config import BRANCHES, ConfigError, EvaluateConfig, Mode, amp_setting, check_ranges
from date.data.build import DatasetConfig, build_val_dataset
from date.data.crowdhuman import CrowdHumanDetection
from date.data.loader import build_eval_loader
from date.errors import INPUT_ERRORS
from date.modeling.build import checkpoint_config, detector_from_checkpoint, inference_branch
from date.runtime import checkpoint as ckpt
from date.runtime.distributed import autocast_dtype, resolve_device
from date.runtime.logs import errors_as_messages, quiet_third_party
from date.runtime.outputs import check_output_file

log = logging.getLogger("date.evaluate")


def is_evaluation_json(path: Path) -> bool:
    """Whether ``path`` holds what ``out=`` writes (the COCO numbers as a JSON object): such a file is replaced."""
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(stats, dict) and "AP" in stats and all(isinstance(v, (int, float)) for v in stats.values())


def output_path(cfg: DictConfig, checkpoint: Path) -> Optional[Path]:
    """``out``, checked (date.runtime.outputs), or None when not given."""
    if not cfg.out:
        return None
    return check_output_file(str(cfg.out), key="out", kind='an evaluation JSON ({"AP": ...})',
                             inputs={"checkpoint": checkpoint}, is_own=is_evaluation_json, overwrite=cfg.overwrite)


def branch_to_evaluate(cfg: DictConfig, mode: Mode, checkpoint: Path) -> str:
    """The branch to evaluate: the checkpoint's inference branch, or ``branch=o2m`` (DATE's o2m branch with NMS:
    what the dense supervision learned on its own). ``branch`` and ``nms_thresh`` are checked against the
    branches of the checkpoint's assignment ``mode`` (from its training config)."""
    branches = BRANCHES[mode]
    if cfg.branch is not None and cfg.branch not in branches:
        raise ConfigError(f"branch={cfg.branch}: {checkpoint} has no {cfg.branch} branch (its branches: "
                          f"{', '.join(branches)}); branch=o2m needs a DATE checkpoint "
                          "(assigner=dual). Leave it out to evaluate the inference branch.")
    branch = cfg.branch if cfg.branch is not None else inference_branch(mode)
    if cfg.nms_thresh is not None and branch != "o2m":
        raise ConfigError(f"nms_thresh={cfg.nms_thresh}: {checkpoint} is a one-to-one detector (it infers "
                          "without NMS); nms_thresh applies to the FCOS baseline (assigner=o2m) and to branch=o2m "
                          "only. Leave it out.")
    return branch


def run(cfg: DictConfig) -> dict[str, float]:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("No checkpoint given: pass checkpoint=<path of model_final.pth or last.pth>.")
    checkpoint = Path(cfg.checkpoint).expanduser()
    out = output_path(cfg, checkpoint)
    device = resolve_device(cfg.device)
    saved = ckpt.load(checkpoint)
    trained = checkpoint_config(saved)
    branch = branch_to_evaluate(cfg, Mode(trained.assigner.mode), checkpoint)  # before the val split is built
    dataset_cfg = cfg.dataset if cfg.dataset is not None else trained.dataset
    val_set = build_val_dataset(dataset_cfg)
    model = detector_from_checkpoint(saved, num_classes=val_set.num_classes)
    model.inference_branch = branch
    if cfg.nms_thresh is not None:
        model.decoding = dataclasses.replace(model.decoding, nms_thresh=float(cfg.nms_thresh))
    model.to(device)
    stats, results = evaluate(model=model, loader=build_eval_loader(val_set, batch_size=cfg.batch_size,
                                                                    num_workers=cfg.num_workers),
                              coco_gt=val_set.coco, label_to_category_id=val_set.label_to_category_id, device=device,
                              amp_dtype=autocast_dtype(amp_setting(cfg.amp), device),
                              label=inference_label(model.inference_branch) if cfg.branch is None
                              else "DATE's o2m branch + NMS (a diagnostic)")
    if isinstance(val_set, CrowdHumanDetection):  # CrowdHuman's own metrics beside COCO's
        crowd = crowd_score(val_set, results, val_set.ids, label="of the checkpoint")
        stats.update({f"crowd/{k}": v for k, v in crowd.items()})
    print("  ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    if out is not None:
        ckpt.write_atomic(out, json.dumps(stats, indent=1))
        log.info("Written: %s", out)
    return stats


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict[str, float]:
    quiet_third_party()
    with errors_as_messages({**dict.fromkeys(INPUT_ERRORS, 2), ckpt.SaveError: 1}):
        return run(cfg)



ENTRYPOINT = cli.Entrypoint(
    module="date.evaluate", config_name="evaluate", schema=EvaluateConfig, sections={"dataset": DatasetConfig},
    renamed={"output": "out"}, check_config=check_ranges,
    usage="python -m date.evaluate checkpoint=<model_final.pth | last.pth> [out=eval.json] [nms_thresh=0.5] "
          "[branch=o2m] [key=value ...]",
    about="Evaluates a checkpoint of date.train with COCOeval on the val split of its dataset (or of "
          "dataset=<preset> dataset.<key>=..., the keys of `python -m date.train --help`) and prints the 12 "
          "numbers; out= also writes them as JSON. Writes nothing else.",
    help_groups=("dataset",))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    cli.main(ENTRYPOINT, main)
