#!/usr/bin/env bash
# coco_r50_1x: the paper's COCO setting, ResNet-50 1x, assigners {o2o,dual} without and {o2o,dual} with 3DMF,
# on SLURM (hydra/launcher=slurm). Published reference: DATE R50-F 37.3 AP, DATE R50-F-3DMF 38.9 AP (12 epochs).
# Table and expected outcome: experiments/README.md.
#   COCO_ROOT=/data/coco experiments/coco_r50_1x.sh [Hydra overrides, e.g. hydra.launcher.partition=gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib/coco_recipe.sh
coco_recipe coco_r50_1x o2o,dual o2o,dual "$@"
