#!/usr/bin/env bash
# claim_study (experiments/README.md, "claim_study"): the pre-registered test of the paper's claim. DATE (dual)
# vs POTO (o2o), paired by seed, with FCOS (o2m) at 1x for the premise:
#   1x: seeds 0 .. N1-1 x {o2o, dual, o2m};   3x: seeds 0 .. N3-1 x {o2o, dual}
# N1 and N3 were fixed by the pilot's power analysis before the first run (experiments/README.md): never change
# them after looking at p. Two lanes run side by side, one per schedule, each run on one thread (OMP_NUM_THREADS=1:
# one seed is one run only at one thread count); each sweep takes seed by seed (every mode of seed 0, then of
# seed 1, ...), so an interrupted study holds whole pairs. Rerun the same command to resume: every job continues
# from its last.pth, a finished one is reported, not retrained, and the sweeps keep their ids. It ends with
# `analysis.convergence` over both sweeps into $OUT.
#
#   experiments/claim_study.sh                          # the study (hours: ~7.5 min per 1x run, ~22 per 3x run)
#   O2M_3X=1 experiments/claim_study.sh                 # then also o2m at 3x (exploratory)
# Environment: PYTHON (python), LANES ("1x 3x"), STUDY_DIR (multirun/claim_study), MLFLOW_TRACKING_URI (default: a SQLite store in
# STUDY_DIR, so the study travels with its folder), OUT (experiments/results/claim_study). Extra arguments are
# Hydra overrides for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=16  # pre-registered: pairs at 1x (experiments/results/claim_study/pilot_1x/seed_counts_1x.md)
N3=__N3__  # pre-registered: pairs at 3x
PYTHON=${PYTHON:-python}
STUDY_DIR=${STUDY_DIR:-multirun/claim_study}
OUT=${OUT:-experiments/results/claim_study}
LANES=${LANES:-1x 3x}  # the lanes to run (both by default)
mkdir -p "$STUDY_DIR"
STUDY_DIR=$(cd "$STUDY_DIR" && pwd)
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$STUDY_DIR/mlflow.db}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
seeds() { seq -s, 0 $(($1 - 1)); }

# One process creates the store and the experiment before two sweeps write to it (SQLite's first migration races).
"$PYTHON" -c "import mlflow; mlflow.set_tracking_uri('$MLFLOW_TRACKING_URI'); mlflow.set_experiment('claim_study')"

sweep() {  # folder seeds assigners [overrides]: seed before assigner, so that Hydra runs every mode of a seed in turn
  "$PYTHON" -m date.train -m experiment=convergence_synthetic name=claim_study tracking.experiment=claim_study \
    seed="$2" assigner="$3" schedule="${1%%-*}" tracking.log_model=false hydra.sweep.dir="$STUDY_DIR/$1" "${@:4}" \
    > "$STUDY_DIR/$1.log" 2>&1
}
lane() {  # 1x | 3x, then the Hydra overrides
  case $1 in
    1x) sweep 1x "$(seeds $N1)" o2o,dual,o2m "${@:2}" ;;
    3x) sweep 3x "$(seeds $N3)" o2o,dual "${@:2}"
        if [ "${O2M_3X:-0}" = 1 ]; then sweep 3x-o2m "$(seeds $N3)" o2m "${@:2}"; fi ;;
  esac
}
for schedule in $LANES; do
  lane "$schedule" "$@" &
  sleep 30  # the second sweep's first MLflow writes after the first's
done
wait

ids=()
for sweep_dir in 1x 3x 3x-o2m; do
  if [ -f "$STUDY_DIR/$sweep_dir/sweep_id" ]; then ids+=(--sweep-id "$(cat "$STUDY_DIR/$sweep_dir/sweep_id")"); fi
done
"$PYTHON" -m analysis.convergence --experiment claim_study "${ids[@]}" --out "$OUT"
echo "claim_study: runs in $STUDY_DIR (MLflow $MLFLOW_TRACKING_URI); report in $OUT"
