#!/usr/bin/env bash
# branch_study (experiments/README.md, "branch_study"; issue 23, item 4): what in this regime makes DATE's two
# branches pull against each other? Per seed, in the main job's regime at 1x, one thread per run:
#   part A (64 channels): POTO, FCOS, DATE as the paper builds it, DATE with separate towers
#     (model.share_towers=false), DATE with separate Scales (model.share_scales=false), and FCOS and DATE with the
#     level ranges halved (model.size_of_interest=[32,64,128,256]: the o2m positives on P3-P5, where POTO's matches
#     land; a regime change applied to FCOS alike; POTO does not use the ranges, so its run is the same);
#   part B (the paper's 256 channels, backbone.fpn_channels=256): POTO, FCOS, DATE.
# Every DATE run also scores its o2m branch with NMS (eval_o2m_branch=true; or `python -m date.evaluate
# branch=o2m` on a reused run). experiments/branch_study.py record writes one JSON per run into $OUT/runs/ (the
# study's data, committed); `experiments/branch_study.py analyse` turns them into the tables and the figure.
#
#   experiments/branch_study.sh A      # part A, the pre-registered seeds (branch_study.py SEEDS: 0-7)
#   experiments/branch_study.sh B      # part B, the same seeds
#
# Two lanes (even and odd seeds) side by side, one thread each. Rerun the same command to resume: a run whose JSON
# exists is skipped, a run continues from its last.pth. REUSE=<folder of s<seed>/<o2o|dual> run dirs> with
# REUSE_COMMIT=<their training commit> takes POTO's and DATE's runs of another study trained in the same regime at
# the same thread count (the nms_free study's: `REUSE=/work/study/nms_free_study/1x-study REUSE_COMMIT=49e509b`).
# Environment: PYTHON (python), STUDY_DIR (multirun/branch_study), OUT (experiments/results/branch_study).
set -euo pipefail
set -f  # the overrides hold [..] lists: no globbing
cd "$(dirname "$0")/.."
source experiments/lib/two_lanes.sh
PART=${1:?usage: experiments/branch_study.sh A|B [overrides]}
shift
declare -A VARIANT=(
  [o2o]="assigner=o2o" [dual]="assigner=dual eval_o2m_branch=true" [o2m]="assigner=o2m"
  [dual_towers]="assigner=dual model.share_towers=false eval_o2m_branch=true"
  [dual_scales]="assigner=dual model.share_scales=false eval_o2m_branch=true"
  [o2m_ranges]="assigner=o2m model.size_of_interest=[32,64,128,256]"
  [dual_ranges]="assigner=dual model.size_of_interest=[32,64,128,256] eval_o2m_branch=true"
  [o2o_256]="assigner=o2o backbone.fpn_channels=256" [o2m_256]="assigner=o2m backbone.fpn_channels=256"
  [dual_256]="assigner=dual backbone.fpn_channels=256 eval_o2m_branch=true")
case $PART in
  A) VARIANTS=(o2o dual o2m dual_towers dual_scales o2m_ranges dual_ranges) ;;
  B) VARIANTS=(o2o_256 dual_256 o2m_256) ;;
  *) echo "experiments/branch_study.sh: the part is A or B, not '$PART'" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python}
# the pre-registered seeds 0-7 for both parts (experiments/README.md, "branch_study": the power analysis), kept in
# one place: experiments/branch_study.py SEEDS, which its analysis waits for
mapfile -t SEEDS < <("$PYTHON" experiments/branch_study.py seeds)
[ ${#SEEDS[@]} -gt 0 ] || { echo "experiments/branch_study.sh: no seeds from experiments/branch_study.py seeds" >&2; exit 1; }
OUT=${OUT:-experiments/results/branch_study}
STUDY_DIR=${STUDY_DIR:-multirun/branch_study}
mkdir -p "$STUDY_DIR" "$OUT/runs"
STUDY_DIR=$(cd "$STUDY_DIR" && pwd)
COMMIT=$(git rev-parse --short HEAD)
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$STUDY_DIR/mlflow.db}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# One process creates the store and the experiment before two lanes write to it (SQLite's first migration races).
"$PYTHON" -c "import mlflow; mlflow.set_tracking_uri('$MLFLOW_TRACKING_URI'); mlflow.set_experiment('branch_study')"

one_seed() {  # seed, then the overrides
  local seed=$1 variant run commit
  for variant in "${VARIANTS[@]}"; do
    [ -f "$OUT/runs/s${seed}_$variant.json" ] && continue
    run="$STUDY_DIR/s$seed/$variant" commit=$COMMIT
    if [ -n "${REUSE:-}" ] && [ -f "$REUSE/s$seed/$variant/model_final.pth" ]; then
      run="$REUSE/s$seed/$variant" commit=${REUSE_COMMIT:?REUSE needs REUSE_COMMIT, the commit its runs trained at}
    elif [ ! -f "$run/model_final.pth" ]; then
      # shellcheck disable=SC2086  # the variant's overrides are words
      "$PYTHON" -m date.train ${VARIANT[$variant]} schedule=1x seed="$seed" name=branch_study \
        tracking.experiment=branch_study tracking.log_model=false hydra.run.dir="$run" "${@:2}" \
        >> "$STUDY_DIR/s$seed.log" 2>&1
    fi
    local o2m_eval=()
    if [[ $variant == dual* ]] && ! grep -q '"val/o2m/AP"' "$run/eval_results.json"; then  # a reused run
      mkdir -p "$STUDY_DIR/s$seed"
      o2m_eval=(--o2m-eval "$STUDY_DIR/s$seed/$variant.o2m_eval.json")
      [ -f "${o2m_eval[1]}" ] || "$PYTHON" -m date.evaluate checkpoint="$run/model_final.pth" branch=o2m \
        num_workers=0 out="${o2m_eval[1]}" >> "$STUDY_DIR/s$seed.log" 2>&1
    fi
    "$PYTHON" experiments/branch_study.py record "$run" --seed "$seed" --variant "$variant" --commit "$commit" \
      --out "$OUT/runs/s${seed}_$variant.json" "${o2m_eval[@]}"
  done
  echo "branch_study: part $PART, seed $seed done"
}
two_lanes one_seed "$@"
"$PYTHON" experiments/branch_study.py analyse "$OUT"
