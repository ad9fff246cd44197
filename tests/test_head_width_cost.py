"""experiments/head_width_cost.py: each width builds the head it names, and the table and JSON it writes hold
the parameter counts of those models and the timings it measured."""
import importlib.util
import json

import pytest
import torch

from conftest import REPO

spec = importlib.util.spec_from_file_location("head_width_cost", REPO / "experiments" / "head_width_cost.py")
head_width_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(head_width_cost)

TINY = ["dataset.num_train=8", "dataset.num_val=2", "batch_size=4"]


@pytest.mark.slow
def test_widths_are_built_timed_and_reported(tmp_path, data_cache, one_thread):
    overrides = [*TINY, f"dataset.cache_dir={data_cache}"]
    head_width_cost.main(["--widths", "32", "64", "--steps", "1", "--repeats", "2", "--out", str(tmp_path), *overrides])
    report = json.loads((tmp_path / "head_width_cost.json").read_text())
    rows = {r["fpn_channels"]: r for r in report["rows"]}
    assert set(rows) == {32, 64} and set(report["seconds"]) == {"32", "64"}
    for width in (32, 64):  # the counts are those of the models the config builds, at that width
        model = head_width_cost.trainer_for(width, overrides, tmp_path / "again").model
        assert {m.out_channels for m in model.backbone.fpn.modules() if isinstance(m, torch.nn.Conv2d)} == {width}
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert rows[width]["params_M"] == pytest.approx(params / 1e6)
        times = report["seconds"][str(width)]
        assert len(times) == 2 and all(t > 0 for t in times)
        assert rows[width]["ms_per_step"] == pytest.approx(1e3 * sum(times) / 2)  # the median of two
    assert rows[32]["ratio"] == 1.0 and rows[64]["params_M"] > rows[32]["params_M"]
    ratios = [a / b for a, b in zip(report["seconds"]["64"], report["seconds"]["32"])]
    assert rows[64]["ratio"] == pytest.approx(sum(ratios) / 2)  # the median of two
    table = (tmp_path / "head_width_cost.md").read_text()
    assert "| 32 |" in table and "| 64 |" in table and report["command"].startswith("python experiments/")
    assert torch.get_num_threads() == 1  # the one_thread fixture's: the script leaves threads alone
