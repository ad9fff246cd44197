#!/usr/bin/env bash
# coco_r50_3x: the paper's COCO setting, ResNet-50 3x, assigners {o2m,o2o,dual} without and {o2o,dual} with 3DMF,
# on SLURM (hydra/launcher=slurm). Published reference: DATE R50-F 40.6, DATE R50-F-3DMF 42.0; DeFCN 3x: FCOS 41.4, POTO 39.2, POTO+3DMF 40.6.
# Table and expected outcome: experiments/README.md.
#   COCO_ROOT=/data/coco experiments/coco_r50_3x.sh [Hydra overrides, e.g. hydra.launcher.partition=gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib/coco_recipe.sh
coco_recipe coco_r50_3x o2m,o2o,dual o2o,dual "$@"
