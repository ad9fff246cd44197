"""The hooks of the training loop, one concern each (date/training/trainer.py calls them in its order):

  base.py          what a hook is: the points of the loop it may act at
  train_log.py     the log line and the train/* metrics, every log_every iterations
  progress_bar.py  the terminal's progress bar
  evaluation.py    COCO evaluation (val/*) after every eval_every-th epoch and at the end
  checkpoints.py   last.pth: every checkpoint_every_iters iterations, at epoch ends, finished at the end
  stop_signal.py   a stop signal (preemption, SIGTERM, Ctrl-C): save at the iteration boundary, hand over
  weight_check.py  no overflowed weight is evaluated or saved
  level_diagnostics.py  positives per FPN level of each branch, per epoch (diag/*)
  final_model.py   model_final.pth and the convergence figure
  metrics_flush.py the last metrics sent to MLflow before the run ends
  replicas.py      DDP replicas compared at the end
"""
