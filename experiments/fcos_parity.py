"""Peer parity: our FCOS (the o2m-only baseline) against torchvision's ``FCOS`` in the same training loop.

    python experiments/fcos_parity.py --out experiments/results/fcos_parity [--seeds 0,1,2] [--reuse DIR] [overrides ...]

Three detectors, each trained by date.training.trainer.Trainer on the same config (conf/experiment/
convergence_synthetic.yaml plus the overrides: data, loader, optimiser, schedule, seeds):
- ``ours, torchvision recipe``: assigner=o2m with linear box coding, GIoU box loss, centre sampling 1.5;
- ``ours, paper recipe``: assigner=o2m as DATE's FCOS (exp coding, centerness-weighted -log IoU, no sampling);
- ``torchvision FCOS``: ``torchvision.models.detection.FCOS`` on the same ResNet-FPN body (our builder, same
  depth and width), its own head, assignment, losses and post-processing (score threshold set to ours).
Both FCOS have the paper's level ranges. Writes ``parity.json`` and ``parity.md`` (mean ± std of the final
COCO numbers over seeds, and the val/AP curve) to --out. ``--reuse DIR``: a finished run of date.train under
DIR whose config equals the one a recipe and seed would train (date.config.resume_mismatches: keys that
do not change training aside) is taken instead of training it again (e.g. the o2m runs of
convergence_synthetic.sh and branch_coupling_synthetic.sh).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch
import yaml
from torch import nn
from torchvision.models.detection import FCOS

from date.config import compose_config, resolved_config, resume_mismatches
from date.criterion import Losses
from date.data.build import build_datasets
from date.modeling.backbone import build_resnet_fpn
from date.modeling.build import build_criterion, build_detector
from date.runtime.checkpoint import seed_everything
from date.training.trainer import RunContext, Trainer

RECIPES = {
    "ours, torchvision recipe": ["assigner=o2m", "model.o2m_box_coding=linear", "model.o2m_box_loss=giou",
                                 "assigner.fcos_center_sampling=1.5"],
    "ours, paper recipe": ["assigner=o2m"],
    "torchvision FCOS": ["assigner=o2m"],  # the config of everything but the detector
}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class TorchvisionFCOS(nn.Module):
    """torchvision's FCOS behind the interface the Trainer uses: ``forward`` hands the batch on to
    :class:`TorchvisionFCOSLoss` (torchvision computes its losses inside its own forward) and
    ``predict_branches`` runs its inference with NMS."""

    inference_branch = "o2m"

    def __init__(self, cfg, *, num_classes: int, image_size: int):
        super().__init__()
        body = build_resnet_fpn(depth=cfg.backbone.depth, weights=str(cfg.backbone.weights),
                                fpn_channels=cfg.backbone.fpn_channels)
        # images arrive normalised and at their size: torchvision's transform must change neither
        self.fcos = FCOS(body, num_classes=num_classes, min_size=image_size, max_size=image_size,
                         image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], score_thresh=cfg.model.score_thresh,
                         nms_thresh=cfg.model.nms_thresh, detections_per_img=cfg.model.detections_per_img)

    def forward(self, images: torch.Tensor):
        return {"images": images}, None

    @torch.no_grad()
    def predict_branches(self, images: torch.Tensor, image_sizes, branches, *, nms=None) -> list[list[dict]]:
        """torchvision's inference (with NMS), for the one branch it has."""
        detections = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"]}
                      for d in self.fcos(list(images))]
        return [detections for _ in branches]


class TorchvisionFCOSLoss:
    """torchvision's own FCOS losses (focal, GIoU, centerness; each / foreground), weighted 1 : 1 : 1."""

    def __init__(self, model: TorchvisionFCOS):
        self.model = model

    def __call__(self, outputs, locations, targets, progress) -> Losses:
        tv_targets = [{"boxes": t["boxes"].to(outputs["images"].device), "labels": t["labels"]} for t in targets]
        losses = self.model.fcos(list(outputs["images"]), tv_targets)
        terms = {"o2m/cls": losses["classification"], "o2m/iou": losses["bbox_regression"],
                 "o2m/ctr": losses["bbox_ctrness"]}
        # torchvision assigns inside its loss: no positives per level to report (the level diagnostics stay empty)
        return Losses(sum(terms.values()), terms, dict.fromkeys(terms, 1.0), {"o2m": 1.0, "o2o": 0.0}, {})


def finished_runs(root: Path | None) -> list[tuple[dict, Path]]:
    """(resolved config, run dir) of every finished date.train run under ``root``."""
    if root is None:
        return []
    return [(yaml.safe_load(path.read_text()), path.parent) for path in sorted(root.rglob("config_resolved.yaml"))
            if (path.parent / "model_final.pth").exists() and (path.parent / "eval_results.json").exists()]


def train_one(recipe: str, seed: int, overrides: list[str], out: Path, reusable: list) -> list[dict]:
    """One run (or a finished one with the same config); returns its eval history ([{"epoch": e, ...}])."""
    cfg = compose_config(["experiment=convergence_synthetic", *RECIPES[recipe], f"seed={seed}", *overrides])
    if recipe != "torchvision FCOS":
        for config, run_dir in reusable:
            if not resume_mismatches(config, resolved_config(cfg)):
                print(f"{recipe}, seed {seed}: reusing {run_dir}")
                return json.loads((run_dir / "eval_results.json").read_text())
    train_set, val_set = build_datasets(cfg.dataset, augmentation=cfg.schedule.augmentation)
    seed_everything(cfg.seed)
    if recipe == "torchvision FCOS":
        model = TorchvisionFCOS(cfg, num_classes=train_set.num_classes, image_size=cfg.dataset.test_short_size)
        criterion = TorchvisionFCOSLoss(model)
    else:
        model, criterion = build_detector(cfg, num_classes=train_set.num_classes), build_criterion(cfg)
    run_dir = out / "runs" / f"{recipe.replace(' ', '_').replace(',', '')}-s{seed}"
    Trainer(cfg, model=model, criterion=criterion, datasets=(train_set, val_set),
            run=RunContext(run_dir, torch.device("cpu"))).fit()
    (run_dir / "config.json").write_text(json.dumps(resolved_config(cfg), indent=1))
    return json.loads((run_dir / "eval_results.json").read_text())


def to_markdown(results: dict[str, dict[int, list[dict]]]) -> str:
    lines = ["# FCOS peer parity", "", "Final COCO numbers (points), mean ± std over seeds; same data, loader, "
             "optimiser, schedule and seeds for all three.", "",
             "| detector | seeds | " + " | ".join(METRICS) + " |", "| --- | ---: |" + " ---: |" * len(METRICS)]
    for recipe, runs in results.items():
        cells = []
        for metric in METRICS:
            values = [100 * history[-1][f"val/{metric}"] for history in runs.values()]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f}")
        lines.append(f"| {recipe} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "val/AP (points) by epoch, mean over seeds:", "",
              "| detector | " + " | ".join(str(h["epoch"]) for h in next(iter(next(iter(results.values())).values())))
              + " |"]
    lines.append("| --- |" + " ---: |" * len(lines[-1].split("|")[2:-1]))
    for recipe, runs in results.items():
        curves = list(zip(*[[100 * h["val/AP"] for h in history] for history in runs.values()]))
        lines.append(f"| {recipe} | " + " | ".join(f"{statistics.mean(c):.2f}" for c in curves) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for parity.md, parity.json and the runs")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1, 2],
                        help="comma-separated (default 0,1,2)")
    parser.add_argument("--reuse", type=Path, default=None, help="take finished runs with the same config from here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (dataset.num_train=16 ...)")
    args = parser.parse_args(argv)
    reusable = finished_runs(args.reuse)
    results = {recipe: {seed: train_one(recipe, seed, args.overrides, args.out, reusable) for seed in args.seeds}
               for recipe in RECIPES}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parity.json").write_text(json.dumps(results, indent=1))
    (args.out / "parity.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    # the Trainer's log lines (iteration, ETA, losses, img/s; each evaluation) show the progress of each run
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    main()
