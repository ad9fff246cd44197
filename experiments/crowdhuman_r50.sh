#!/usr/bin/env bash
# crowdhuman_r50: the paper's CrowdHuman setting on SLURM (conf/experiment/crowdhuman_r50.yaml, the official recipe:
# R50, 30k iterations at 16 images, 500 detections per image): FCOS (o2m, with NMS), POTO (o2o) and DATE (dual) in one
# sweep, then the convergence report (COCO AP and val/crowd/AP, mMR, JI, recall per epoch in MLflow) and the NMS-free
# evidence on the final checkpoints. Published (R50, CrowdHuman val, AP / MR^-2 / recall): DATE-F 90.5 / 49.0 / 97.9,
# POTO 88.5 / 52.2 / 96.3, FCOS with NMS 86.1 / 54.9 / 94.2 (DeFCN: about 1.0 MR^-2 of noise between runs).
#   CROWDHUMAN_ROOT=/data/crowdhuman experiments/crowdhuman_r50.sh [Hydra overrides, e.g. hydra.launcher.partition=gpu]
# Environment: CROWDHUMAN_ROOT (required: annotation_train.odgt, annotation_val.odgt, Images/), SEEDS (0), PYTHON,
# SWEEP_DIR, OUT. Offline ImageNet weights: backbone.weights=/path/to/resnet50-0676ba61.pth.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CROWDHUMAN_ROOT:?set CROWDHUMAN_ROOT to the CrowdHuman folder (annotation_train.odgt, annotation_val.odgt, Images/)}"
PYTHON=${PYTHON:-python}
SWEEP_DIR=${SWEEP_DIR:-multirun/crowdhuman_r50/$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-$SWEEP_DIR/analysis}
"$PYTHON" -m date.train -m experiment=crowdhuman_r50 dataset.root="$CROWDHUMAN_ROOT" seed="${SEEDS:-0}" \
  assigner=o2m,o2o,dual hydra.sweep.dir="$SWEEP_DIR" "$@"
"$PYTHON" -m analysis.convergence --experiment crowdhuman_r50 --sweep-id "$(cat "$SWEEP_DIR/sweep_id")" --out "$OUT"
"$PYTHON" -m analysis.duplicates --checkpoint "$SWEEP_DIR"/*/model_final.pth --out "$OUT"
for checkpoint in "$SWEEP_DIR"/*/model_final.pth; do  # CrowdHuman's own numbers of each final model
  "$PYTHON" -m date.evaluate checkpoint="$checkpoint" out="$OUT/$(basename "$(dirname "$checkpoint")").json"
done
echo "crowdhuman_r50: figures and tables in $OUT; the published numbers are in this script's header"
