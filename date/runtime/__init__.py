"""What a training job needs around the method: processes (distributed), SLURM's signal (preemption),
checkpoints, MLflow (tracking: the store, run names and tags; run_tracker: the run) and log lines / error
messages (logs)."""
