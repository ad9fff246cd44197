"""``python -m date.train dataset=crowdhuman``: a tiny odgt dataset goes through the existing training path (items,
transforms, loader, COCO evaluation), and bad odgt input stops it before the model with one ``Error:`` paragraph."""
from __future__ import annotations

import json
import re

import pytest

from conftest import run_in_process, run_module

try:
    from data_fixtures.crowdhuman import write_crowdhuman, write_odgt
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures.crowdhuman import write_crowdhuman, write_odgt

# 2 iterations of 2 images (schedule=smoke: 2 epochs), a COCO evaluation after each, a small head
TINY = ["dataset.train_short_sizes=[64]", "dataset.max_size=96", "dataset.test_short_size=64", "schedule=smoke",
        "batch_size=2", "num_workers=0", "log_every=1", "eval_every=1", "tracking.log_model=false",
        "tracking.system_metrics=false", "backbone.fpn_channels=64", "model.num_convs=1"]


@pytest.mark.slow
def test_a_tiny_crowdhuman_dataset_trains(tmp_path, train_env):
    root = write_crowdhuman(tmp_path / "crowdhuman")
    result = run_module("date.train", ["dataset=crowdhuman", f"dataset.root={root}", *TINY], env=train_env,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Datasets: 2 train / 2 val images, 1 classes" in output
    assert re.search(r"Evaluation after epoch 2 \(2 val images\): AP \d\.\d{4}", output)
    assert (root / "annotation_train.odgt.sizes.json").is_file()  # the header sizes, cached for the next run
    # CrowdHuman's metrics beside COCO's at every evaluation, in the run dir (and MLflow: the same val/* dict)
    assert re.search(r"CrowdHuman metrics after epoch 2: AP \d\.\d{4}  MR\^-2 \d\.\d{4}  JI \d\.\d{4}  recall "
                     r"\d\.\d{4}", output)
    (run_dir,) = {p.parent for p in tmp_path.glob("outputs/**/eval_results.json")}
    history = json.loads((run_dir / "eval_results.json").read_text())
    crowd = ["val/crowd/AP", "val/crowd/mMR", "val/crowd/JI", "val/crowd/recall"]
    assert [h["epoch"] for h in history] == [1, 2] and all(set(crowd) <= set(h) for h in history)
    assert all(0.0 <= history[-1][k] <= 1.0 for k in crowd)
    # date.evaluate on the checkpoint: the same detections, so the same CrowdHuman numbers as the last evaluation
    evaluated = run_in_process("date.evaluate", [f"checkpoint={run_dir / 'model_final.pth'}", "num_workers=0"],
                               env=train_env, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for key in crowd:
        shown = re.search(rf"{key.removeprefix('val/')} (\d\.\d{{4}})", evaluated.stdout)
        assert shown and float(shown.group(1)) == pytest.approx(history[-1][key], abs=1e-4), (key, evaluated.stdout)


def test_bad_odgt_input_stops_before_the_model_with_one_message(tmp_path, train_env):
    root = write_crowdhuman(tmp_path / "crowdhuman")
    lines = (root / "annotation_train.odgt").read_text().splitlines()
    write_odgt(root / "annotation_train.odgt", [lines[0], lines[1][:-20]])  # the 2nd line cut short
    result = run_in_process("date.train", ["dataset=crowdhuman", f"dataset.root={root}", *TINY], env=train_env,
                            cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert re.fullmatch(rf"Error: {re.escape(str(root))}/annotation_train\.odgt:2 is not valid JSON \(.*, column \d+\)\. "
                        r"An \.odgt file holds one JSON record per line: fix or regenerate that line \(a truncated "
                        r"download or copy is the usual cause\)\.", error)
    assert "Model:" not in result.stdout + result.stderr  # stopped before the detector was built
