"""The per-run convergence figure (date/run_figure.py): a PNG with a curve for every metric logged."""
import numpy as np
from matplotlib import image

from date.run_figure import write_run_figure

HISTORY = [{"epoch": e, "val/AP": 0.05 * e, "val/AP50": 0.1 * e} for e in range(1, 5)]
LOSSES = [[10 * i, 5.0 / i] for i in range(1, 9)]


def test_the_figure_shows_each_logged_metric(tmp_path):
    plain = image.imread(write_run_figure(HISTORY, LOSSES, tmp_path / "plain.png", title="o2o"))
    with_o2m = [{**h, "val/o2m/AP": 0.04 * h["epoch"]} for h in HISTORY]
    dual = image.imread(write_run_figure(with_o2m, LOSSES, tmp_path / "dual.png", title="o2o"))
    assert plain.shape == dual.shape and plain.shape[2] in (3, 4)
    assert not np.array_equal(plain, dual)  # the o2m branch's curve is drawn
    no_loss = image.imread(write_run_figure(HISTORY, [], tmp_path / "no_loss.png", title="o2o"))
    assert not np.array_equal(plain, no_loss)  # the loss curve is drawn
