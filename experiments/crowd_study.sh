#!/usr/bin/env bash
# crowd_study (experiments/README.md, "crowd_study"): the paper's crowd claim on dataset=synthetic_crowd: does NMS
# cost FCOS recall and MR^-2 that the NMS-free detectors (POTO, DATE) keep? Each seed trains FCOS (o2m), POTO (o2o)
# and DATE (dual) in the main job's regime (1x, ResNet-18, the preset's 224 images), then evaluates every final
# checkpoint with `python -m date.evaluate out=` into $OUT/evals/s<seed>_<variant>.json: FCOS at NMS IoU 0.5, 0.6
# and 0.7 (one training, three thresholds: date.evaluate nms_thresh=), POTO and DATE without NMS. The evaluation
# files are the study's data (committed); experiments/crowd_study.py turns them into the tables and the figure, and
# analysis.duplicates gives the duplicate rates of the first seed's checkpoints.
#
#   experiments/crowd_study.sh pilot   # seeds 100-103: the spread behind the seed count (~35 min on 2 cores)
#   experiments/crowd_study.sh study   # seeds 0 .. N-1, N below, fixed by the pilot before the study ran
#
# Two lanes run side by side (even and odd seeds), each run on one thread. Rerun the same command to resume: a seed
# whose five evaluation files exist is skipped, a run continues from its last.pth (STUDY_DIR kept) or is trained
# again (same seed, same numbers on CPU). Environment: PYTHON (python), STUDY_DIR (multirun/crowd_study), OUT
# (experiments/results/crowd_study[/pilot]). Extra arguments are Hydra overrides for every training.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/lib/two_lanes.sh
N=5  # pre-registered: the study's pairs, from the pilot (experiments/results/crowd_study/pilot/seed_counts.md)
STAGE=${1:?usage: experiments/crowd_study.sh pilot|study [overrides]}
shift
case $STAGE in
  pilot) SEEDS=(100 101 102 103); OUT=${OUT:-experiments/results/crowd_study/pilot} ;;
  study) : "${N:?N is set from the pilot (experiments/crowd_study.py seeds ...): run the pilot first}"
         mapfile -t SEEDS < <(seq 0 $((N - 1))); OUT=${OUT:-experiments/results/crowd_study} ;;
  *) echo "experiments/crowd_study.sh: the stage is pilot or study, not '$STAGE'" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python}
STUDY_DIR=${STUDY_DIR:-multirun/crowd_study}/$STAGE
mkdir -p "$STUDY_DIR" "$OUT/evals"
STUDY_DIR=$(cd "$STUDY_DIR" && pwd)
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$STUDY_DIR/mlflow.db}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
NMS=(0.5 0.6 0.7)

# One process creates the store and the experiment before two lanes write to it (SQLite's first migration races).
"$PYTHON" -c "import mlflow; mlflow.set_tracking_uri('$MLFLOW_TRACKING_URI'); mlflow.set_experiment('crowd_study')"

evaluate() {  # checkpoint variant seed [nms_thresh=...]
  "$PYTHON" -m date.evaluate checkpoint="$1" num_workers=0 out="$OUT/evals/s$3_$2.json" overwrite=true "${@:4}" \
    >> "$STUDY_DIR/s$3.log" 2>&1
}
one_seed() {  # seed, then the overrides
  local seed=$1 done=1
  for variant in "${NMS[@]/#/o2m_nms}" o2o dual; do [ -f "$OUT/evals/s${seed}_$variant.json" ] || done=0; done
  if [ $done = 1 ]; then echo "crowd_study: seed $seed is evaluated: skipped"; return; fi
  for assigner in o2m o2o dual; do
    [ -f "$STUDY_DIR/s$seed/$assigner/model_final.pth" ] && continue  # trained; its evaluations were not all written
    "$PYTHON" -m date.train dataset=synthetic_crowd assigner=$assigner seed="$seed" name=crowd_study \
      tracking.experiment=crowd_study tracking.log_model=false hydra.run.dir="$STUDY_DIR/s$seed/$assigner" "${@:2}" \
      >> "$STUDY_DIR/s$seed.log" 2>&1
  done
  for t in "${NMS[@]}"; do evaluate "$STUDY_DIR/s$seed/o2m/model_final.pth" "o2m_nms$t" "$seed" nms_thresh="$t"; done
  for assigner in o2o dual; do evaluate "$STUDY_DIR/s$seed/$assigner/model_final.pth" $assigner "$seed"; done
  echo "crowd_study: seed $seed done"
}
two_lanes one_seed "$@"

if [ "$STAGE" = pilot ]; then
  "$PYTHON" experiments/crowd_study.py seeds "$OUT"
else
  "$PYTHON" experiments/crowd_study.py analyse "$OUT"
  first=${SEEDS[0]}
  "$PYTHON" -m analysis.duplicates --checkpoint "$STUDY_DIR/s$first/o2m/model_final.pth" \
    "$STUDY_DIR/s$first/o2o/model_final.pth" "$STUDY_DIR/s$first/dual/model_final.pth" --out "$OUT/duplicates" --show 4
fi
