#!/usr/bin/env bash
# branch_coupling_synthetic: do DATE's two branches help or fight in the shared layers, and which switch
# changes that? On the synthetic benchmark at 1x (conf/experiment/convergence_synthetic.yaml), seeds {0,1,2}:
#   unshared  - dual with model.share_towers=false model.share_scales=false (each branch its own towers and Scales);
#   tv_o2m    - dual with torchvision's FCOS recipe for the o2m branch: linear box coding (as the o2o branch
#               has, so the shared Scales mean the same for both), GIoU box loss, centre sampling 1.5.
#               (FCOS alone with that recipe: experiments/fcos_parity.sh, "ours, torchvision recipe".)
# Every dual run also logs its o2m branch with NMS (val/o2m/*). Run after convergence_synthetic.sh with the
# same NAME, then one report over all sweeps (`analysis.convergence --sweep-id ...` for each, plus
# --group-param model.share_towers --group-param model.o2m_box_loss).
#   experiments/branch_coupling_synthetic.sh [Hydra overrides for every run]
# Environment: PYTHON (python), SEEDS (0,1,2), NAME (convergence_synthetic), SWEEP_DIR, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
NAME=${NAME:-convergence_synthetic}
SEEDS=${SEEDS:-0,1,2}
SWEEP_DIR=${SWEEP_DIR:-multirun/$NAME/coupling-$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-$SWEEP_DIR/analysis}
common=(experiment=convergence_synthetic name="$NAME" tracking.experiment="$NAME" seed="$SEEDS")

"$PYTHON" -m date.train -m "${common[@]}" assigner=dual model.share_towers=false model.share_scales=false \
  hydra.sweep.dir="$SWEEP_DIR/unshared" "$@"
"$PYTHON" -m date.train -m "${common[@]}" assigner=dual model.o2m_box_coding=linear model.o2m_box_loss=giou \
  assigner.fcos_center_sampling=1.5 hydra.sweep.dir="$SWEEP_DIR/tv_o2m" "$@"
"$PYTHON" -m analysis.convergence --experiment "$NAME" --sweep-id "$(cat "$SWEEP_DIR/unshared/sweep_id")" \
  --sweep-id "$(cat "$SWEEP_DIR/tv_o2m/sweep_id")" --group-param model.share_towers --group-param model.o2m_box_loss \
  --out "$OUT"
echo "branch_coupling_synthetic: figures and tables in $OUT"
