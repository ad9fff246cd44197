"""The non-finite checks and their report: nothing NaN or Inf reaches the weights or a checkpoint.

The step checks the loss terms and the gradient norm between backward and the update (:func:`check_finite`);
the weights are checked before every evaluation and every save (:func:`check_weights`). Either stops training
with one paragraph (:func:`non_finite_error`) naming what went wrong, where, and the last good checkpoint.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from torch import nn

from date.runtime.logs import examples


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; training stopped without writing a checkpoint."""


def check_finite(values: list[float], names: Sequence[str], *, where: str, last_checkpoint: Path) -> None:
    """values = (total, loss terms..., gradient norm) as floats, named by ``names``; raise NonFiniteLossError
    naming the first bad loss term (else the gradients)."""
    if all(math.isfinite(v) for v in values):
        return
    detail = ", ".join(f"{n} = {v:.4g}" for n, v in zip(names, values))
    if all(math.isfinite(v) for v in values[:-1]):
        what = f"gradients at {where}: their norm is {values[-1]} while the loss is finite ({detail})"
    else:
        bad = next((n for n, v in zip(names[1:-1], values[1:-1]) if not math.isfinite(v)), names[0])
        what = f"loss at {where}: {bad} is {values[names.index(bad)]} ({detail})"
    raise non_finite_error(what, last_checkpoint=last_checkpoint)


def check_weights(model: nn.Module, *, global_iter: int, last_checkpoint: Path) -> None:
    """Refuse weights that overflowed in the last update (finite gradients, a huge lr)."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise non_finite_error(f"weights after iteration {global_iter}: {examples(bad, 3)}",
                               last_checkpoint=last_checkpoint)


def non_finite_error(what: str, *, last_checkpoint: Path) -> NonFiniteLossError:
    """The one-paragraph stop message; nothing non-finite is ever written, so the last checkpoint is good."""
    last_good = (f"the last good one, {last_checkpoint}, is intact" if last_checkpoint.exists()
                 else "none had been written yet")
    return NonFiniteLossError(
        f"Non-finite {what}. Training stopped without writing a checkpoint; {last_good}. Try a lower optim.lr, keep "
        "optim.clip_grad_norm set, or amp=false.")
