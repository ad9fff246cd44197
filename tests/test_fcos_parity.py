"""experiments/fcos_parity.py end to end on a tiny budget: the three detectors train in the same loop and
the table reports each."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, run_in_process

TINY = ["dataset.num_train=8", "dataset.num_val=4", "batch_size=4", "num_workers=0", "schedule.epochs=2",
        "schedule.lr_steps=[1]", "schedule.warmup_iters=1", "log_every=1"]


@pytest.mark.slow
def test_parity_script_trains_all_three_in_the_same_loop(tmp_path, train_env):
    result = subprocess.run([sys.executable, "experiments/fcos_parity.py", "--out", str(tmp_path), "--seeds", "0",
                             *TINY], cwd=REPO, env=train_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "parity.json").read_text())
    assert list(results) == ["ours, torchvision recipe", "ours, paper recipe", "torchvision FCOS"]
    for recipe, runs in results.items():
        history = runs["0"]
        assert [h["epoch"] for h in history] == [1, 2], recipe
        assert all(0.0 <= h["val/AP"] <= 1.0 for h in history), recipe
    table = (tmp_path / "parity.md").read_text()
    assert "| torchvision FCOS | 1 |" in table and "| ours, paper recipe | 1 |" in table
    ours = json.loads((tmp_path / "runs" / "ours_torchvision_recipe-s0" / "config.json").read_text())
    assert ours["model"]["o2m_box_loss"] == "giou" and ours["assigner"]["fcos_center_sampling"] == 1.5


@pytest.mark.slow
def test_parity_reuses_a_finished_run_of_the_same_config_only(tmp_path, train_env):
    trained = run_in_process("date.train", ["experiment=convergence_synthetic", "assigner=o2m", "seed=0", *TINY],
                             env=train_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = subprocess.run([sys.executable, str(REPO / "experiments" / "fcos_parity.py"), "--out",
                             str(tmp_path / "parity"), "--seeds", "0", "--reuse", str(tmp_path / "outputs"), *TINY],
                            cwd=REPO, env=train_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ours, paper recipe, seed 0: reusing" in result.stdout  # the same config
    assert "ours, torchvision recipe, seed 0: reusing" not in result.stdout  # another recipe: trained
    reused = json.loads((tmp_path / "parity" / "parity.json").read_text())["ours, paper recipe"]["0"]
    run_dir = next((tmp_path / "outputs").rglob("eval_results.json")).parent
    assert reused == json.loads((run_dir / "eval_results.json").read_text())
