"""Analysis of DATE experiments: convergence curves and tables from MLflow runs (``analysis.convergence``)
and the NMS-free evidence from checkpoints (``analysis.duplicates``)."""
