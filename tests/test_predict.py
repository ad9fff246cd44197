"""`python -m date.predict` as a user runs it, on the checkpoint of a real (smoke) training: COCO results equal to the
evaluation's detections, one drawn image per input, and bad input as one paragraph."""
import json
import math
import os
import re
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO
from torchvision.transforms.v2 import functional as F

from conftest import SMOKE, run_in_process, sandbox_env
from date.coco_eval import predict_coco
from date.config import PredictConfig
from date.data.build import build_val_dataset
from date.data.loader import build_eval_loader
from date.modeling.build import checkpoint_config, detector_from_checkpoint
from date.predict import run
from date.runtime import checkpoint as ckpt
from date.runtime.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_cache) -> dict[str, str]:
    """conftest's train_env for the whole module (that fixture is per test): the training runs once."""
    root = tmp_path_factory.mktemp("predict")
    return sandbox_env(root, data_cache)


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory, data_cache):
    """(model_final.pth of a smoke training, its val split)."""
    cwd = tmp_path_factory.mktemp("train")
    # nothing of the process is tested here; eval_o2m_branch=true also scores DATE's o2m branch (the training is the same)
    result = run_in_process("date.train", [*SMOKE, "eval_o2m_branch=true"], env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    [checkpoint] = cwd.glob("outputs/**/model_final.pth")
    dataset = checkpoint_config(ckpt.load(checkpoint)).dataset
    dataset.cache_dir = str(data_cache)  # where the training (DATE_DATA_CACHE) put it
    return checkpoint, build_val_dataset(dataset)


def _predict(args: list[str], *, env, cwd):
    return run_in_process("date.predict", [*args, "device=cpu"], env=env, cwd=cwd)


def _evaluation_results(checkpoint, val_set) -> list[dict]:
    """date.coco_eval's records for the val split, as date.evaluate computes them."""
    model = detector_from_checkpoint(ckpt.load(checkpoint), num_classes=val_set.num_classes)
    results, _ = predict_coco(model=model, loader=build_eval_loader(val_set, batch_size=8, num_workers=0),
                              label_to_category_id=val_set.label_to_category_id, device=torch.device("cpu"))
    return results


def _pixels(path) -> torch.Tensor:
    with Image.open(path) as image:
        return F.pil_to_tensor(image.convert("RGB"))


@pytest.mark.slow
def test_detections_are_the_evaluations_and_every_image_is_drawn(trained, env, tmp_path):
    checkpoint, val_set = trained
    folder = val_set.image_dir / "val"
    result = _predict([f"checkpoint={checkpoint}", f"images={folder}", f"out={tmp_path / 'out'}", "score_thresh=0",
                       "batch_size=3"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing else in the working directory
    assert "detections on" in (tmp_path / "out" / "predict.log").read_text()  # its log is in out=

    gt = COCO(str(tmp_path / "out" / "images.json"))
    detections = gt.loadRes(str(tmp_path / "out" / "detections.json"))  # a valid COCO result set for those images
    val_ids = {str(val_set.image_path(i)): val_set.ids[i] for i in range(len(val_set))}
    assert sorted(im["file_name"] for im in gt.dataset["images"]) == sorted(val_ids)
    assert all((im["width"], im["height"]) == (128, 128) for im in gt.dataset["images"])
    assert gt.dataset["categories"] == [{"id": c, "name": n} for c, n in zip(val_set.label_to_category_id,
                                                                             val_set.class_names)]
    to_val = {im["id"]: val_ids[im["file_name"]] for im in gt.dataset["images"]}
    ours = [{**d, "image_id": to_val[d["image_id"]]} for d in json.loads((tmp_path / "out" / "detections.json")
                                                                         .read_text())]
    expected = _evaluation_results(checkpoint, val_set)
    assert len(expected) == 100 * len(val_set) and len(detections.anns) == len(expected)
    key = lambda d: (d["image_id"], -d["score"], d["category_id"], d["bbox"])  # noqa: E731
    ours, expected = sorted(ours, key=key), sorted(expected, key=key)
    assert [(d["image_id"], d["category_id"]) for d in ours] == [(d["image_id"], d["category_id"]) for d in expected]
    # both write boxes rounded to 0.01 and scores to 1e-5 (date/coco_eval.py); batches of 3 and of 8 differ in the
    # last float bits, which now and then round a value to the neighbouring step: one step apart at most
    torch.testing.assert_close(torch.tensor([d["bbox"] for d in ours]), torch.tensor([d["bbox"] for d in expected]),
                               rtol=0, atol=0.01 + 1e-6)
    torch.testing.assert_close(torch.tensor([d["score"] for d in ours]), torch.tensor([d["score"] for d in expected]),
                               rtol=0, atol=1e-5 + 1e-8)

    for path in val_ids:
        name = os.path.basename(path)
        drawn, original = _pixels(tmp_path / "out" / name), _pixels(path)
        assert drawn.shape == original.shape and not torch.equal(drawn, original)  # 100 boxes drawn on each


@pytest.mark.slow
def test_evaluate_writes_out_alone_and_replaces_an_earlier_evaluation(trained, env, tmp_path):
    checkpoint, _ = trained
    args = [f"checkpoint={checkpoint}", "num_workers=0", "device=cpu", f"out={tmp_path / 'eval.json'}"]
    results = []
    for _ in range(2):  # the second finds the first's file: its own kind, replaced without asking
        result = run_in_process("date.evaluate", args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        results.append(json.loads((tmp_path / "eval.json").read_text()))
    assert results[0] == results[1] and len(results[0]) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no outputs/evaluate/<time>/


@pytest.mark.slow
def test_evaluate_branch_o2m_scores_the_o2m_branch_as_the_training_did(trained, env, tmp_path):
    """branch=o2m gives what the training's last evaluation gave its o2m branch (val/o2m/*, and as many detections
    after NMS), with NMS at the checkpoint's or the given threshold."""
    checkpoint, _ = trained
    final = json.loads((checkpoint.parent / "eval_results.json").read_text())[-1]
    result = run_in_process("date.evaluate", [f"checkpoint={checkpoint}", "num_workers=0", "device=cpu",
                                              "branch=o2m", f"out={tmp_path / 'o2m.json'}"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    o2m = json.loads((tmp_path / "o2m.json").read_text())
    assert o2m == pytest.approx({k[len("val/o2m/"):]: v for k, v in final.items() if k.startswith("val/o2m/")})
    count = re.compile(r"COCO bbox evaluation of (.+?) on \d+ images, (\d+) detections")
    evaluated = count.findall(result.stdout + result.stderr)
    assert [label for label, _ in evaluated] == ["DATE's o2m branch + NMS (a diagnostic)"]
    trained_counts = dict(count.findall((checkpoint.parent / "train.log").read_text()))  # the last of each label
    final_epoch = final["epoch"]
    assert evaluated[0][1] == trained_counts[f"the o2m branch + NMS (a diagnostic) after epoch {final_epoch}"]
    # NMS runs on that branch, at nms_thresh= when given: with the o2m boxes widened by hand (~12 px around
    # locations 8 px apart) and room for every candidate, a lower threshold keeps fewer of them
    saved = ckpt.load(checkpoint)
    saved["model"]["head.predictors.o2m.box.bias"] += math.log(12.0)
    saved["config"]["model"]["detections_per_img"] = 1000
    ckpt.save_atomic(saved, tmp_path / "wide.pth")

    def detections(*args) -> int:
        result = run_in_process("date.evaluate", ["checkpoint=wide.pth", "num_workers=0", "device=cpu", "branch=o2m",
                                                  *args], env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return int(count.findall(result.stdout + result.stderr)[0][1])
    assert detections("nms_thresh=0.1") < detections() < detections("nms_thresh=1.0")


@pytest.mark.slow
def test_evaluate_branch_o2m_of_a_poto_checkpoint_is_refused_with_its_branches(env, tmp_path):
    trained = run_in_process("date.train", [*SMOKE, "assigner=o2o", "hydra.run.dir=poto"], env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_in_process("date.evaluate", ["checkpoint=poto/model_final.pth", "branch=o2m", "out=o2m.json"],
                            env=env, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "branch=o2m: " in result.stderr and "has no o2m branch (its branches: o2o)" in result.stderr
    assert not (tmp_path / "o2m.json").exists()
    # refused from the checkpoint's config, before the val split is built: a dataset that cannot be built is not
    # reached (alone, it is refused with its own message)
    missing = ["dataset=coco", f"dataset.root={tmp_path / 'no_coco'}"]
    alone = run_in_process("date.evaluate", ["checkpoint=poto/model_final.pth", *missing], env=env, cwd=tmp_path)
    assert alone.returncode == 2 and "no_coco is not a folder" in alone.stderr, alone.stderr[-3000:]
    for refused in (["branch=o2m"], ["nms_thresh=0.5"]):
        result = run_in_process("date.evaluate", ["checkpoint=poto/model_final.pth", *refused, *missing], env=env,
                                cwd=tmp_path)
        assert result.returncode == 2 and f"{refused[0]}: " in result.stderr, result.stderr[-3000:]
        assert "no_coco" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_unreadable_image_is_named_and_the_others_are_processed(trained, env, tmp_path):
    checkpoint, val_set = trained
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        shutil.copy(val_set.image_path(i), folder / f"good{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not looked at")
    result = _predict([f"checkpoint={checkpoint}", f"images={folder}", f"out={tmp_path / 'out'}", "score_thresh=1"],
                      env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"Cannot read image file {folder / 'broken.png'}" in result.stdout  # the warning (log on stdout)
    message = result.stderr[result.stderr.index("Error: "):]
    assert "1 of 3 images could not be read and were skipped: " + str(folder / "broken.png") in message
    assert "Traceback" not in result.stderr and len(message.strip().splitlines()) == 1

    images = json.loads((tmp_path / "out" / "images.json").read_text())["images"]
    assert [im["file_name"] for im in images] == [str(folder / "good0.png"), str(folder / "good1.png")]
    detections = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert {d["image_id"] for d in detections} == {im["id"] for im in images} and len(detections) == 200
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["good0.png", "good1.png"]
    for i in range(2):  # no detection scores 1: the drawn image is the input
        assert torch.equal(_pixels(tmp_path / "out" / f"good{i}.png"), _pixels(val_set.image_path(i)))


@pytest.mark.slow
def test_no_image_found_is_one_paragraph_and_exit_code_2(trained, env, tmp_path):
    checkpoint, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    result = _predict([f"checkpoint={checkpoint}", f"images={empty}", f"out={tmp_path / 'out'}"], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr[result.stderr.index("Error: "):]
    assert len(message.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"No image found in images={empty}" in message and ".jpg, .jpeg, .png" in message, message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def _other_version(checkpoint, tmp_path):
    """The checkpoint with a config key this version does not know (as one of a later version would have)."""
    saved = ckpt.load(checkpoint)
    saved["config"]["model"]["future_key"] = 1
    path = tmp_path / "future.pth"
    ckpt.save_atomic(saved, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["garbage", "other version"])
def test_bad_checkpoint_is_refused_before_anything_is_written(case, trained, tmp_path):
    """In-process (the exit code and message of a CheckpointError are date.runtime.logs.errors_as_messages', shown
    above for a ConfigError); date.runtime.checkpoint.load passes on torch's multi-line text for garbage."""
    checkpoint, val_set = trained
    if case == "garbage":
        checkpoint = tmp_path / "garbage.pth"
        checkpoint.write_bytes(b"not a checkpoint")
        expected = rf"Cannot read checkpoint {checkpoint}: (.|\n)* It is not a DATE checkpoint"
    else:
        checkpoint = _other_version(checkpoint, tmp_path)
        expected = r"config does not fit this version of the suite: .*future_key"
    cfg = OmegaConf.structured(PredictConfig(checkpoint=str(checkpoint), images=str(val_set.image_dir / "val"),
                                             out=str(tmp_path / "out"), device="cpu"))
    with pytest.raises(CheckpointError, match=expected):
        run(cfg)
    assert not (tmp_path / "out").exists()
