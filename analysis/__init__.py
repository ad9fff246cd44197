"""Analysis of DATE experiments: convergence curves, effects against POTO paired by seed and tables from MLflow
runs (``analysis.convergence``) and the NMS-free evidence from checkpoints (``analysis.duplicates``)."""
