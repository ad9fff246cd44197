"""What a training job needs around the method: processes (distributed), SLURM's signal (preemption),
checkpoints, MLflow (tracking) and log lines / error messages (logs)."""
