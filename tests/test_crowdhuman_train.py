"""``python -m date.train dataset=crowdhuman``: a tiny odgt dataset goes through the existing training path (items,
transforms, loader, COCO evaluation), and bad odgt input stops it before the model with one ``Error:`` paragraph."""
from __future__ import annotations

import json
import math
import re

import pytest

from conftest import run_in_process
from date.runtime import checkpoint as ckpt

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
    result = run_in_process("date.train", ["dataset=crowdhuman", f"dataset.root={root}", *TINY], env=train_env,
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
    # nms_thresh is the FCOS baseline's: a one-to-one detector infers without NMS, so it is refused
    refused = run_in_process("date.evaluate", [f"checkpoint={run_dir / 'model_final.pth'}", "nms_thresh=0.5"],
                             env=train_env, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "nms_thresh=0.5: " in refused.stderr and "applies to the FCOS baseline (assigner=o2m) and to branch=o2m only" in refused.stderr


def _last_numbers(output: str) -> str:
    """The last evaluation's detection count, COCO and CrowdHuman numbers as a training or date.evaluate logs them."""
    count = re.findall(r"on \d+ images, (\d+) detections", output)[-1]
    coco = re.findall(r"AP (\d\.\d{4})  AP50 (\d\.\d{4})  AP75 (\d\.\d{4})", output)[-1]
    crowd = re.findall(r"(?:crowd/)?AP (\d\.\d{4})\s+(?:crowd/mMR|MR\^-2) (\d\.\d{4})\s+(?:crowd/)?JI (\d\.\d{4})\s+"
                       r"(?:crowd/)?recall (\d\.\d{4})", output)[-1]
    return " ".join([count, *coco, *crowd])


@pytest.mark.slow
def test_fcos_evaluated_at_another_nms_threshold_is_that_threshold_in_its_config(tmp_path, train_env):
    """`date.evaluate nms_thresh=T` on an FCOS checkpoint gives what the same weights with model.nms_thresh=T in the
    checkpoint's config give: one training serves every threshold. The trained boxes are widened by hand (the o2m
    box bias + log 12: ltrb of ~12 px around locations 8 px apart) and every score kept, so that NMS has overlaps
    to remove and its threshold shows."""
    root = write_crowdhuman(tmp_path / "crowdhuman")
    trained = run_in_process("date.train", ["dataset=crowdhuman", f"dataset.root={root}", "assigner=o2m",
                                            "model.prior_prob=0.5", "model.detections_per_img=1000", *TINY],
                             env=train_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (final,) = tmp_path.glob("outputs/**/model_final.pth")
    saved = ckpt.load(final)
    saved["model"]["head.predictors.o2m.box.bias"] += math.log(12.0)
    at_06, at_03 = tmp_path / "nms06.pth", tmp_path / "nms03.pth"
    assert saved["config"]["model"]["nms_thresh"] == 0.6
    ckpt.save_atomic(saved, at_06)
    saved["config"]["model"]["nms_thresh"] = 0.3
    ckpt.save_atomic(saved, at_03)

    def evaluated(checkpoint, *args) -> str:
        result = run_in_process("date.evaluate", [f"checkpoint={checkpoint}", "num_workers=0", *args], env=train_env,
                                cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return _last_numbers(result.stdout + result.stderr)
    assert evaluated(at_06, "nms_thresh=0.3") == evaluated(at_03)
    assert evaluated(at_03, "nms_thresh=0.6") == evaluated(at_06) != evaluated(at_03)  # the threshold shows


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
