# Shared body of the COCO recipes (experiments/coco_*.sh); sourced, not run.
# coco_recipe NAME BACKBONE SCHEDULE ASSIGNERS ASSIGNERS_3DMF [Hydra overrides ...]
#   Two sweeps on SLURM (hydra/launcher=slurm), submitted together: ASSIGNERS without 3DMF and
#   ASSIGNERS_3DMF with model.use_3dmf=true (3DMF filters the o2o score, so it has no o2m-only form).
#   Then the convergence report over both sweeps and the NMS-free evidence on their final checkpoints.
# Environment: COCO_ROOT (required), BACKBONE_WEIGHTS (imagenet, or /path/to/resnet50.pth offline),
#   GPUS (8: GPUs per run, 16/GPUS images per GPU = the paper's 16 per step), SEEDS (0), PYTHON, SWEEP_DIR, OUT.
coco_recipe() {
  local name=$1 backbone=$2 schedule=$3 assigners=$4 assigners_3dmf=$5
  shift 5
  : "${COCO_ROOT:?set COCO_ROOT to the COCO 2017 folder (annotations/, train2017/, val2017/)}"
  local python=${PYTHON:-python} gpus=${GPUS:-8}
  local sweep_dir=${SWEEP_DIR:-multirun/$name/$(date +%Y-%m-%d_%H-%M-%S)}
  local out=${OUT:-$sweep_dir/analysis}
  local common=(name="$name" tracking.experiment="$name" hydra/launcher=slurm dataset=coco dataset.root="$COCO_ROOT"
                backbone="$backbone" backbone.weights="${BACKBONE_WEIGHTS:-imagenet}" schedule="$schedule"
                seed="${SEEDS:-0}" batch_size=$((16 / gpus)) hydra.launcher.gpus_per_node="$gpus"
                hydra.launcher.tasks_per_node="$gpus")
  # Each multirun blocks until its SLURM array is done; both arrays wait in the queue at once.
  "$python" -m date.train -m "${common[@]}" assigner="$assigners" model.use_3dmf=false \
    hydra.sweep.dir="$sweep_dir/plain" "$@" &
  local plain=$!
  "$python" -m date.train -m "${common[@]}" assigner="$assigners_3dmf" model.use_3dmf=true \
    hydra.sweep.dir="$sweep_dir/3dmf" "$@" &
  local with_3dmf=$!
  wait "$plain"
  wait "$with_3dmf"
  "$python" -m analysis.convergence --experiment "$name" --sweep-id "$(cat "$sweep_dir/plain/sweep_id")" \
    --sweep-id "$(cat "$sweep_dir/3dmf/sweep_id")" --out "$out"
  "$python" -m analysis.duplicates --checkpoint "$sweep_dir"/*/*/model_final.pth --out "$out"
  echo "$name: figures and tables in $out; compare with the published numbers in experiments/README.md"
}
