#!/usr/bin/env bash
# A refactor changes no number: the same six CPU runs (seed 0, num_workers=0: the main job's 288 iterations,
# and 48 iterations each of o2m, o2o, dual_topk, 3DMF and o2m_decay with the 3x augmentation) from a checkout,
# every MLflow metric history dumped to <out>/metrics.json. Run it on the commit before and the one after,
# then compare:  python experiments/refactor_check/histories.py compare <before out> <after out>
#   experiments/refactor_check/run.sh <checkout, e.g. a git worktree at a fixed commit> <out dir>
# Environment: PYTHON (python), DATE_DATA_CACHE (shared by both checkouts: the same generated data), EXTRA (Hydra
# overrides for every run, space-separated: to pin a default that changed on purpose between the two commits, e.g.
# EXTRA=eval_subset=250 against a commit before eval_subset's default became 100).
set -euo pipefail
repo=$(cd "$1" && pwd); out=$(mkdir -p "$2" && cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
export DATE_HOME=$out/home
cd "$repo"
run() {
  local tag=$1; shift
  echo "== $tag"
  # run dirs under <out>, never the checkout's outputs/: a finished run left there by an earlier check would be
  # skipped ("nothing to train") and its metrics would be missing from this check's store
  if [ -e "$out/runs/$tag" ]; then echo "$out/runs/$tag exists: give refactor_check a fresh <out dir>" >&2; exit 1; fi
  "$PYTHON" -m date.train name="$tag" num_workers=0 "$@" ${EXTRA:-} "hydra.run.dir=$out/runs/$tag" > "$out/$tag.log" 2>&1 \
    || { echo "FAILED $tag"; tail -20 "$out/$tag.log"; }
}
short=(schedule.max_iters=48 schedule.epochs=2 "schedule.lr_steps=[1]" log_every=4)
run main
run o2m assigner=o2m "${short[@]}"
run o2o assigner=o2o "${short[@]}"
run topk assigner=dual_topk "${short[@]}"
run mf assigner=dual model.use_3dmf=true "${short[@]}"
run decay branch_weighting=o2m_decay schedule=3x "${short[@]}"
"$PYTHON" "$here/histories.py" dump "$out/home/mlflow.db" > "$out/metrics.json"
echo "metric histories in $out/metrics.json"
