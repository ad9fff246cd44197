# Shared body of the COCO recipes (experiments/coco_*.sh); sourced, not run.
# coco_recipe EXPERIMENT ASSIGNERS ASSIGNERS_3DMF [Hydra overrides ...]
#   Two sweeps on SLURM, submitted together: experiment=EXPERIMENT over ASSIGNERS, and
#   experiment=EXPERIMENT_3dmf over ASSIGNERS_3DMF (3DMF filters the o2o score: it has no o2m-only form).
#   Every hyperparameter is in conf/experiment/EXPERIMENT.yaml and the base it includes,
#   conf/experiment/base/coco_8gpu.yaml (`--cfg job` prints them). Then the
#   convergence report over both sweeps and the NMS-free evidence on their final checkpoints.
# Environment: COCO_ROOT (required), SEEDS (0), PYTHON, SWEEP_DIR, OUT. Other settings are overrides,
#   e.g. backbone.weights=/path/to/resnet50.pth offline, or fewer GPUs (16 images per step in all):
#   hydra.launcher.gpus_per_node=4 hydra.launcher.tasks_per_node=4 batch_size=4
coco_recipe() {
  local name=$1 assigners=$2 assigners_3dmf=$3
  shift 3
  : "${COCO_ROOT:?set COCO_ROOT to the COCO 2017 folder (annotations/, train2017/, val2017/)}"
  local python=${PYTHON:-python}
  local sweep_dir=${SWEEP_DIR:-multirun/$name/$(date +%Y-%m-%d_%H-%M-%S)}
  local out=${OUT:-$sweep_dir/analysis}
  local common=(dataset.root="$COCO_ROOT" seed="${SEEDS:-0}")
  # Each multirun blocks until its SLURM array is done; both arrays wait in the queue at once.
  "$python" -m date.train -m experiment="$name" "${common[@]}" assigner="$assigners" \
    hydra.sweep.dir="$sweep_dir/plain" "$@" &
  local plain=$!
  "$python" -m date.train -m experiment="${name}_3dmf" "${common[@]}" assigner="$assigners_3dmf" \
    hydra.sweep.dir="$sweep_dir/3dmf" "$@" &
  local with_3dmf=$!
  wait "$plain"
  wait "$with_3dmf"
  "$python" -m analysis.convergence --experiment "$name" --sweep-id "$(cat "$sweep_dir/plain/sweep_id")" \
    --sweep-id "$(cat "$sweep_dir/3dmf/sweep_id")" --out "$out"
  "$python" -m analysis.duplicates --checkpoint "$sweep_dir"/*/*/model_final.pth --out "$out"
  echo "$name: figures and tables in $out; compare with the published numbers in experiments/README.md"
}
