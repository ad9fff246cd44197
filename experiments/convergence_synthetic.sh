#!/usr/bin/env bash
# convergence_synthetic (conf/experiment/convergence_synthetic.yaml): does dual assignment make POTO converge faster and end better, at no inference
# cost? {o2o, dual, o2m} x seeds {0,1,2} at 1x on the synthetic benchmark (9 runs, one after the other on
# this 2-core CPU), then the convergence report and the NMS-free evidence. Expected outcome: experiments/README.md.
#
#   experiments/convergence_synthetic.sh                      # the experiment (~45-50 min on 2 idle cores)
#   SCHEDULE=smoke experiments/convergence_synthetic.sh dataset.num_train=16 dataset.num_val=8 batch_size=4 \
#     num_workers=0 optim.lr=0.02 schedule.epochs=4 schedule.max_iters=16 schedule.lr_steps=[3]
#                                                             # a ~3-minute proof of the pipeline
# Extra arguments are Hydra overrides for every run. Environment: PYTHON (python), SCHEDULE (1x),
# SEEDS (0,1,2), ASSIGNERS (o2o,dual,o2m; the long schedule: o2o,dual), NAME (convergence_synthetic: the run folder and the MLflow experiment), SWEEP_DIR
# (rerun with the same SWEEP_DIR to resume an interrupted sweep), OUT (<sweep dir>/analysis).
# The MLflow store is the suite's default or $MLFLOW_TRACKING_URI (use that, not tracking.uri=, so
# that the analysis reads the same store).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
NAME=${NAME:-convergence_synthetic}
SCHEDULE=${SCHEDULE:-1x}
SEEDS=${SEEDS:-0,1,2}
ASSIGNERS=${ASSIGNERS:-o2o,dual,o2m}
SWEEP_DIR=${SWEEP_DIR:-multirun/$NAME/$SCHEDULE-$(date +%Y-%m-%d_%H-%M-%S)}
OUT=${OUT:-$SWEEP_DIR/analysis}

"$PYTHON" -m date.train -m experiment=convergence_synthetic name="$NAME" tracking.experiment="$NAME" \
  assigner="$ASSIGNERS" seed="$SEEDS" schedule="$SCHEDULE" hydra.sweep.dir="$SWEEP_DIR" "$@"
# The sweep's id (written by date.runtime.tracking.SweepCallback) selects exactly these runs in MLflow.
SWEEP_ID=$(cat "$SWEEP_DIR/sweep_id")
"$PYTHON" -m analysis.convergence --experiment "$NAME" --sweep-id "$SWEEP_ID" --out "$OUT"
"$PYTHON" -m analysis.duplicates --checkpoint "$SWEEP_DIR"/*/model_final.pth --out "$OUT"
echo "convergence_synthetic: sweep $SWEEP_ID in $SWEEP_DIR; figures and tables in $OUT"
