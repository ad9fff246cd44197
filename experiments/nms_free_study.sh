#!/usr/bin/env bash
# nms_free_study (experiments/README.md, "nms_free_study"; issue 23, item 3): does DATE need NMS here, and does
# DeFCN's 3D max filtering (3DMF) bring NMS's gain to about 0? Each seed trains POTO (o2o) and DATE (dual), each
# with and without 3DMF (model.use_3dmf), in the main job's regime on the default synthetic benchmark, then runs
# `python -m analysis.duplicates` on each final checkpoint: COCO AP of the raw top-100 (no NMS) and after NMS, and
# the duplicate rates, on all 1,000 val images, into $OUT/evals/s<seed>_<variant>/duplicates.json. Those files are
# the study's data (committed); experiments/nms_free_study.py turns them into the tables and the figure.
#
#   experiments/nms_free_study.sh pilot          # seeds 100-101 at 1x: the spread behind the seed count
#   experiments/nms_free_study.sh study          # seeds 0 .. N-1 at 1x, N fixed by the pilot before the study (.py PAIRS)
#   SCHEDULE=3x experiments/nms_free_study.sh pilot|study   # the same at 3x, its own pilot and N
#
# Two lanes run side by side (even and odd seeds), each run on one thread (one seed is one run only at one thread
# count). Rerun the same command to resume: a seed whose four evaluation files exist is skipped, a run continues
# from its last.pth (STUDY_DIR kept) or is trained again (same seed, same numbers on CPU). Environment: PYTHON
# (python), SCHEDULE (1x), STUDY_DIR (multirun/nms_free_study), OUT (experiments/results/nms_free_study/<schedule>
# [/pilot]). Extra arguments are Hydra overrides for every training.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib/two_lanes.sh
STAGE=${1:?usage: experiments/nms_free_study.sh pilot|study [overrides]}
shift
SCHEDULE=${SCHEDULE:-1x}
PYTHON=${PYTHON:-python}
case $STAGE in
  pilot) SEEDS=(100 101); OUT=${OUT:-experiments/results/nms_free_study/$SCHEDULE/pilot} ;;
  # the pre-registered pairs per schedule, each fixed by its own pilot, live in nms_free_study.py (PAIRS)
  study) listed=$("$PYTHON" experiments/nms_free_study.py study-seeds "$SCHEDULE")  # exits when there is no N yet
         mapfile -t SEEDS <<< "$listed"; OUT=${OUT:-experiments/results/nms_free_study/$SCHEDULE} ;;
  *) echo "experiments/nms_free_study.sh: the stage is pilot or study, not '$STAGE'" >&2; exit 2 ;;
esac
STUDY_DIR=${STUDY_DIR:-multirun/nms_free_study}/$SCHEDULE-$STAGE
mkdir -p "$STUDY_DIR" "$OUT/evals"
STUDY_DIR=$(cd "$STUDY_DIR" && pwd)
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$STUDY_DIR/mlflow.db}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# variant name -> its overrides
declare -A VARIANT=([o2o]="assigner=o2o" [dual]="assigner=dual"
                    [o2o_3dmf]="assigner=o2o model.use_3dmf=true" [dual_3dmf]="assigner=dual model.use_3dmf=true")

# One process creates the store and the experiment before two lanes write to it (SQLite's first migration races).
"$PYTHON" -c "import mlflow; mlflow.set_tracking_uri('$MLFLOW_TRACKING_URI'); mlflow.set_experiment('nms_free_study')"

one_seed() {  # seed, then the overrides
  local seed=$1 variant
  for variant in o2o dual o2o_3dmf dual_3dmf; do
    [ -f "$OUT/evals/s${seed}_$variant/duplicates.json" ] && continue
    local run="$STUDY_DIR/s$seed/$variant"
    if [ ! -f "$run/model_final.pth" ]; then
      # shellcheck disable=SC2086  # the variant's overrides are words
      "$PYTHON" -m date.train ${VARIANT[$variant]} schedule="$SCHEDULE" seed="$seed" name=nms_free_study \
        tracking.experiment=nms_free_study tracking.log_model=false hydra.run.dir="$run" "${@:2}" \
        >> "$STUDY_DIR/s$seed.log" 2>&1
    fi
    "$PYTHON" -m analysis.duplicates --checkpoint "$run/model_final.pth" --out "$OUT/evals/s${seed}_$variant" \
      >> "$STUDY_DIR/s$seed.log" 2>&1
  done
  echo "nms_free_study: seed $seed done"
}
two_lanes one_seed "$@"

if [ "$STAGE" = pilot ]; then
  "$PYTHON" experiments/nms_free_study.py seeds "$OUT"
else
  "$PYTHON" experiments/nms_free_study.py analyse "$OUT" --schedule "$SCHEDULE"
fi
