"""The end of training's files: model_final.pth and the run's convergence figure (rank 0)."""
from __future__ import annotations

from date.run_figure import write_run_figure
from date.runtime import checkpoint as ckpt
from date.training.hooks.base import Hook
from date.training.non_finite import check_weights

FIGURE = "convergence.png"  # the run's own convergence figure, in its run dir (date/run_figure.py)


class FinalModel(Hook):
    """After the last iteration (rank 0): model_final.pth ({"model", "config", "metrics"}: what date.evaluate,
    date.predict and date.export read) and the convergence figure of the eval and loss histories."""

    def after_train(self, trainer) -> None:
        if not trainer.run.dist.is_main:
            return
        state, run_dir = trainer.state, trainer.run.run_dir
        check_weights(trainer.model, global_iter=state.global_iter, last_checkpoint=trainer.last_checkpoint)
        ckpt.save_atomic({"model": trainer.model.state_dict(), "config": trainer.config, "metrics": state.metrics},
                         run_dir / ckpt.FINAL)
        write_run_figure(state.eval_history, state.loss_history, run_dir / FIGURE,
                         title=f"{run_dir.name}: assigner {trainer.cfg.assigner.mode}, seed {trainer.cfg.seed}")
