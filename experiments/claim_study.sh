#!/usr/bin/env bash
# claim_study (experiments/README.md, "claim_study"): the pre-registered test of the paper's claim. DATE (dual)
# vs POTO (o2o), paired by seed, with FCOS (o2m) at 1x for the premise:
#   1x: seeds 0 .. N1-1 x {o2o, dual, o2m};   3x: seeds 0 .. N3-1 x {o2o, dual}
# N1 and N3 were fixed by the pilot's power analysis before the first run (experiments/README.md): never change
# them after looking at p. Two lanes run side by side, one per schedule, each run on one thread (OMP_NUM_THREADS=1:
# one seed is one run only at one thread count). A lane runs one sweep per seed (every mode of seed 0, then of
# seed 1, ...; the seed, not the sweep, decides a run) and, after each, archives the finished runs as JSON files in
# $ARCHIVE (experiments/study_archive.py), which is committed: the study outlives the machine it runs on. Rerun the
# same command, on this machine or a fresh clone, to resume: a seed whose modes are all archived is skipped, an
# interrupted one continues from its last.pth where STUDY_DIR survived (else it is trained again: same numbers).
# It ends with `analysis.convergence` over the archive into $OUT.
#
#   experiments/claim_study.sh                          # the study (hours: ~5-7.5 min per 1x run, ~13-22 per 3x run)
#   O2M_3X=1 experiments/claim_study.sh                 # then also o2m at 3x (exploratory)
# Environment: PYTHON (python), LANES ("1x 3x"), STUDY_DIR (multirun/claim_study), MLFLOW_TRACKING_URI (default: a SQLite
# store in STUDY_DIR), ARCHIVE (experiments/results/claim_study/runs), OUT (experiments/results/claim_study).
# Extra arguments are Hydra overrides for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=16  # pre-registered: pairs at 1x (experiments/results/claim_study/pilot_1x/seed_counts_1x.md)
N3=5  # pre-registered: pairs at 3x (experiments/results/claim_study/pilot_3x/seed_counts_3x.md)
PYTHON=${PYTHON:-python}
STUDY_DIR=${STUDY_DIR:-multirun/claim_study}
OUT=${OUT:-experiments/results/claim_study}
ARCHIVE=${ARCHIVE:-$OUT/runs}
LANES=${LANES-1x 3x}  # the lanes to run (both when unset; LANES= runs only the analysis of the archive)
mkdir -p "$STUDY_DIR"
STUDY_DIR=$(cd "$STUDY_DIR" && pwd)
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$STUDY_DIR/mlflow.db}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
seeds() { seq -s, 0 $(($1 - 1)); }

# One process creates the store and the experiment before two sweeps write to it (SQLite's first migration races).
"$PYTHON" -c "import mlflow; mlflow.set_tracking_uri('$MLFLOW_TRACKING_URI'); mlflow.set_experiment('claim_study')"

archived() {  # schedule seed assigners: are all these modes of the seed in the archive?
  local listed
  listed=$("$PYTHON" experiments/study_archive.py list "$ARCHIVE" 2>/dev/null || true)
  for assigner in ${3//,/ }; do grep -qx "$1 $2 $assigner" <<< "$listed" || return 1; done
}
sweep() {  # folder schedule seeds assigners [overrides]: one sweep per seed, each archived when it ends
  for seed in ${3//,/ }; do
    if archived "$2" "$seed" "$4"; then echo "claim_study: $2 seed $seed ($4) is archived: skipped"; continue; fi
    "$PYTHON" -m date.train -m experiment=convergence_synthetic name=claim_study tracking.experiment=claim_study \
      seed="$seed" assigner="$4" schedule="$2" tracking.log_model=false hydra.sweep.dir="$STUDY_DIR/$1-s$seed" "${@:5}" \
      > "$STUDY_DIR/$1-s$seed.log" 2>&1
    "$PYTHON" experiments/study_archive.py export --tracking-uri "$MLFLOW_TRACKING_URI" --experiment claim_study \
      --out "$ARCHIVE"
  done
}
lane() {  # 1x | 3x, then the Hydra overrides
  case $1 in
    1x) sweep 1x 1x "$(seeds $N1)" o2o,dual,o2m "${@:2}" ;;
    3x) sweep 3x 3x "$(seeds $N3)" o2o,dual "${@:2}"
        if [ "${O2M_3X:-0}" = 1 ]; then sweep 3x-o2m 3x "$(seeds $N3)" o2m "${@:2}"; fi ;;
  esac
}
for schedule in $LANES; do
  lane "$schedule" "$@" &
  sleep 30  # the second sweep's first MLflow writes after the first's
done
wait

# The analysis reads the archive (every finished seed, from whichever machine ran it) through a fresh store.
rm -f "$STUDY_DIR/archive.db"
"$PYTHON" experiments/study_archive.py import "$ARCHIVE" --tracking-uri "sqlite:///$STUDY_DIR/archive.db"
"$PYTHON" -m analysis.convergence --tracking-uri "$STUDY_DIR/archive.db" --experiment claim_study --out "$OUT"
echo "claim_study: runs in $STUDY_DIR (MLflow $MLFLOW_TRACKING_URI), archived in $ARCHIVE; report in $OUT"
