"""CrowdHuman's metrics of a detection file: ``python -m date.crowdhuman_eval gt=GT.odgt dt=DT.odgt out=metrics.json``.

``gt``: the official ground-truth format, each line with ``height`` and ``width`` (or ``images=DIR``, the folder of
``<ID>.jpg``, to read the sizes from the image headers); ``dt``: one line per image ``{"ID": ..., "dtboxes":
[{"box": [x, y, w, h], "score": s}, ...]}`` (extra keys allowed; an image without a line has no detection).
Prints AP, MR^-2, JI and recall (date/crowd_metrics.py) and writes them to ``out`` as fractions. Bad input ends
with one message naming the file and line, and exit code 2, as in date.train.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from date.config import ConfigError
from date.crowd_metrics import crowd_metrics
from date.data.errors import DatasetError
from date.data.odgt import ground_truth, image_sizes, read_detections, read_ground_truth, sizes_from_records
from date.errors import INPUT_ERRORS
from date.runtime.logs import errors_as_messages

log = logging.getLogger("date.crowdhuman_eval")


def run(cfg: DictConfig) -> dict[str, float]:
    missing = [key for key in ("gt", "dt") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"Not set: {', '.join(missing)}. Pass gt=<ground-truth .odgt> dt=<detection .odgt> "
                          "(and images=<folder of <ID>.jpg> if the gt lines have no height / width).")
    gt_path, dt_path = Path(cfg.gt).expanduser(), Path(cfg.dt).expanduser()
    records = read_ground_truth(gt_path)
    sizes = (image_sizes(records, Path(cfg.images).expanduser(), gt_path) if cfg.images
             else sizes_from_records(records, gt_path))
    detections = read_detections(dt_path, [r.id for r in records], gt_path)
    log.info("%s: %d images; %s: %d detections", gt_path, len(records), dt_path, sum(len(d.scores) for d in detections))
    try:
        metrics = crowd_metrics(ground_truth(records, sizes), detections)
    except ValueError as e:  # no person in the ground truth
        raise DatasetError(f"{gt_path}: {e} Evaluate against a split with annotated people.") from None
    print("  ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
    if cfg.out:
        Path(cfg.out).expanduser().write_text(json.dumps(metrics, indent=1))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="crowdhuman_eval")
def main(cfg: DictConfig) -> dict[str, float]:
    with errors_as_messages(dict.fromkeys(INPUT_ERRORS, 2)):
        return run(cfg)


if __name__ == "__main__":
    main()
