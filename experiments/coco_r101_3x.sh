#!/usr/bin/env bash
# coco_r101_3x: the paper's COCO setting, ResNet-101 3x, assigners {o2o,dual} without and {o2o,dual} with 3DMF,
# on SLURM (hydra/launcher=slurm). Published reference: DATE R101-F 42.2 AP (36 epochs); no published R101 3DMF number.
# Table and expected outcome: experiments/README.md.
#   COCO_ROOT=/data/coco experiments/coco_r101_3x.sh [Hydra overrides, e.g. hydra.launcher.partition=gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib/coco_recipe.sh
coco_recipe coco_r101_3x o2o,dual o2o,dual "$@"
