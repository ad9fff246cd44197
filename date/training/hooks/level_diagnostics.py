"""Where each branch is supervised: positives per FPN level, per epoch (diag/* metrics, level_diagnostics.json).

With the paper's FCOS ranges on small images the o2m branch has positives on P3-P4 only, while POTO's single
positive per object may land on any level; these counts show whether the two branches train the same levels.
"""
from __future__ import annotations

import json

from date.runtime import checkpoint as ckpt
from date.training.hooks.base import Hook
from date.training.state import StepOutput

LEVELS = ("P3", "P4", "P5", "P6", "P7")
FILE = "level_diagnostics.json"


class LevelDiagnostics(Hook):
    """Sums each branch's positives per level over the epoch (rank 0's share of every batch, in
    ``state.level_counts``, so a resumed run counts as an uninterrupted one); after the epoch logs
    ``diag/o2m_positives_per_image/P3``..``P7`` (FCOS positive locations per image) and
    ``diag/o2o_match_share/P3``..``P7`` (the share of POTO's matches on each level), and appends the raw counts
    to ``state.level_history`` and the run dir's level_diagnostics.json."""

    def after_step(self, trainer, step: StepOutput) -> None:
        counts = trainer.state.level_counts
        counts["images"] = counts.get("images", 0) + step.images // trainer.run.dist.world_size
        for branch, per_level in step.losses.positives_per_level.items():
            counts[branch] = [a + b for a, b in zip(counts.get(branch, [0] * len(per_level)), per_level.tolist())]

    def after_epoch(self, trainer) -> None:
        state, run = trainer.state, trainer.run
        counts, state.level_counts = state.level_counts, {}
        if not counts.get("images") or not {"o2o", "o2m"} & set(counts):  # a criterion that reports none
            return
        state.level_history.append({"epoch": state.epoch, **counts})
        metrics = {}
        if "o2m" in counts:
            metrics.update({f"diag/o2m_positives_per_image/{name}": n / counts["images"]
                            for name, n in zip(LEVELS, counts["o2m"])})
        if "o2o" in counts:
            matches = max(sum(counts["o2o"]), 1)
            metrics.update({f"diag/o2o_match_share/{name}": n / matches for name, n in zip(LEVELS, counts["o2o"])})
        run.tracker.log_metrics(metrics, step=state.epoch)
        if run.dist.is_main:
            ckpt.write_atomic(run.run_dir / FILE, json.dumps(state.level_history, indent=1))
