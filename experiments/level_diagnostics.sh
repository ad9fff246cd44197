#!/usr/bin/env bash
# level_diagnostics: on which FPN levels POTO's matches land, in POTO and in DATE, at 1x in the main regime
# (experiment=convergence_synthetic, seed 0), beside the levels the FCOS branch of DATE has positives on. Every
# training run writes the counts (level_diagnostics.json, diag/* in MLflow); this trains the two runs and writes
# the table and figure into $OUT (experiments/level_diagnostics.py).
#   experiments/level_diagnostics.sh [Hydra overrides for both runs]     # ~10-15 min on this 2-core CPU
# Environment: PYTHON (python), SWEEP_DIR (multirun/level_diagnostics/<date>), OUT (experiments/results/level_diagnostics).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SWEEP_DIR=${SWEEP_DIR:-multirun/level_diagnostics/$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-experiments/results/level_diagnostics}
train=(-m date.train -m experiment=convergence_synthetic name=level_diagnostics tracking.experiment=level_diagnostics
       assigner=o2o,dual seed=0 tracking.log_model=false "hydra.sweep.dir=$SWEEP_DIR" "$@")
"$PYTHON" "${train[@]}"
"$PYTHON" experiments/level_diagnostics.py "$SWEEP_DIR"/assigner-o2o*/ "$SWEEP_DIR"/assigner-dual*/ --out "$OUT" \
  --command "python ${train[*]}"
