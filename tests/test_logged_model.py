"""The final model in MLflow: logged from model_final.pth, loaded back from the store in a fresh process that
imports ``date`` from the model's own code, it gives the detections of the checkpoint's detector run as the
evaluation runs it."""
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.transforms.v2 import functional as F

from conftest import REPO, SMOKE
from date.config import compose_config, flatten, resolved_config
from date.data.build import build_val_dataset
from date.data.coco import open_image
from date.data.loader import build_eval_loader
from date.inference import rescale
from date.modeling.build import build_detector, detector_from_checkpoint
from date.runtime import checkpoint as ckpt
from date.runtime.checkpoint import CheckpointError
from date.runtime.logged_model import checked_images, detections_frame, log_detector, model_signature
from date.runtime.run_tracker import RunTracker

# Loads the model in a new process (cwd outside the repo, no PYTHONPATH), predicts, saves the columns.
LOAD_AND_PREDICT = """
import sys
import mlflow, numpy as np
frame = mlflow.pyfunc.load_model(sys.argv[1]).predict(np.load(sys.argv[2]))
np.savez(sys.argv[3], **{column: frame[column].to_numpy() for column in frame.columns})
import date
print(date.__file__)
"""


@pytest.fixture
def trained(tmp_path, data_cache, one_thread):
    """(model_final.pth as date/training/hooks/final_model.py writes it, the val split). prior_prob=0.5: the
    untrained o2o branch scores ~0.5 everywhere, so every image has its 100 detections."""
    cfg = compose_config([*SMOKE, f"dataset.cache_dir={data_cache}", "model.num_convs=1", "model.prior_prob=0.5"])
    val_set = build_val_dataset(cfg.dataset)
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=val_set.num_classes)
    path = tmp_path / "run" / ckpt.FINAL
    ckpt.save_atomic({"model": model.state_dict(), "config": resolved_config(cfg), "metrics": {"val/AP": 0.0}}, path)
    return path, val_set, flatten(resolved_config(cfg))


def _evaluation_detections(checkpoint, val_set) -> dict[str, np.ndarray]:
    """The checkpoint's detector on the eval loader (as date.evaluate builds both), boxes in original pixels
    (as date.coco_eval.to_coco_results scales them), labels as category ids: the pyfunc's columns."""
    model = detector_from_checkpoint(ckpt.load(checkpoint), num_classes=val_set.num_classes).eval()
    rows = {k: [] for k in ("image_index", "boxes", "score", "category_id")}
    for images, targets in build_eval_loader(val_set, batch_size=len(val_set), num_workers=0):
        for i, (pred, target) in enumerate(zip(model.predict(images, [t["image_size"] for t in targets]), targets)):
            (h0, w0), (h, w) = target["orig_size"], target["image_size"]
            rows["image_index"].append(np.full(len(pred["scores"]), i))
            rows["boxes"].append((pred["boxes"] * torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h])).numpy())
            rows["score"].append(pred["scores"].numpy())
            rows["category_id"].append(np.asarray(val_set.label_to_category_id)[pred["labels"].numpy()])
    out = {k: np.concatenate(v) for k, v in rows.items()}
    boxes = out.pop("boxes")
    return {**out, **{name: boxes[:, i] for i, name in enumerate(("x1", "y1", "x2", "y2"))}}


def _images(val_set) -> np.ndarray:
    """The val files as the pyfunc takes them: float32 [B, 3, H, W] in [0, 1]."""
    return torch.stack([F.to_dtype(F.pil_to_tensor(open_image(val_set.image_path(i))), torch.float32, scale=True)
                        for i in range(len(val_set))]).numpy()


@pytest.mark.slow
def test_logged_model_loads_from_the_server_and_detects_as_the_checkpoint(trained, mlflow_server, tmp_path,
                                                                          monkeypatch):
    checkpoint, val_set, params = trained
    tracker = RunTracker.start(uri=mlflow_server.url, experiment="logged_model", run_dir=tmp_path / "run",
                               run_name="r", tags={})  # an experiment of its own on the shared server
    tracker.log_params(params)
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # the process's own store, which must stay in place
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    path_before = list(sys.path)

    uri = log_detector(tracking_uri=mlflow_server.url, run_id=tracker.run_id, checkpoint=checkpoint,
                       label_to_category_id=val_set.label_to_category_id)

    assert (os.environ["MLFLOW_TRACKING_URI"], mlflow.get_tracking_uri(), sys.path) == (elsewhere, elsewhere,
                                                                                       path_before)
    assert mlflow.active_run() is None
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "RUNNING"  # the training's run: neither ended nor restarted
    [model] = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert (uri, model.name, model.source_run_id) == (f"models:/{model.model_id}", "model", tracker.run_id)
    assert model.params == run.data.params and model.params["assigner.mode"] == "dual"  # searchable by config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    info = mlflow.models.get_model_info(f"runs:/{tracker.run_id}/model")
    assert info.signature == model_signature()
    assert info.saved_input_example_info["type"] == "ndarray"

    np.save(tmp_path / "images.npy", _images(val_set))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, f"runs:/{tracker.run_id}/model",
                             str(tmp_path / "images.npy"), str(tmp_path / "detections.npz")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    date_used = result.stdout.strip().splitlines()[-1]
    assert not date_used.startswith(str(REPO)) and f"{os.sep}code{os.sep}date{os.sep}" in date_used, date_used

    logged, expected = dict(np.load(tmp_path / "detections.npz")), _evaluation_detections(checkpoint, val_set)
    assert sorted(logged) == sorted(expected) and len(expected["score"]) == 100 * len(val_set)
    for column in ("image_index", "category_id"):
        np.testing.assert_array_equal(logged[column], expected[column], err_msg=column)
    for column in ("x1", "y1", "x2", "y2", "score"):
        np.testing.assert_allclose(logged[column], expected[column], rtol=0, atol=1e-5, err_msg=column)


def test_checkpoint_of_other_classes_is_refused_before_anything_is_logged(trained, tmp_path):
    checkpoint, _, _ = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker.start(uri=uri, experiment="e", run_dir=tmp_path / "run", run_name="r", tags={})
    with pytest.raises(CheckpointError, match=r"predicts 3 classes but label_to_category_id has 2 entries"):
        log_detector(tracking_uri=uri, run_id=tracker.run_id, checkpoint=checkpoint, label_to_category_id=[1, 2])
    client = MlflowClient(uri)
    assert client.search_logged_models(experiment_ids=["0", client.get_run(tracker.run_id).info.experiment_id]) == []


def test_boxes_scale_back_to_the_input_pixels_and_labels_become_category_ids():
    prediction = {"boxes": torch.tensor([[10.0, 5.0, 40.0, 25.0]]), "scores": torch.tensor([0.9]),
                  "labels": torch.tensor([1])}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    # resized from 25 x 200 (H0, W0) to 50 x 100: x scales by 2, y by 0.5
    frame = detections_frame(rescale([empty, prediction], [(50, 100)] * 2, [(25, 200)] * 2),
                             label_to_category_id=[3, 5])
    assert frame.to_dict("records") == [{"image_index": 1, "x1": 20.0, "y1": 2.5, "x2": 80.0, "y2": 12.5,
                                         "score": pytest.approx(0.9), "category_id": 5}]


@pytest.mark.parametrize("images, problem", [
    (np.zeros((3, 8, 8), np.float32), r"shape \(3, 8, 8\)"),
    (np.zeros((1, 3, 8, 8)), "dtype float64"),
    (np.full((1, 3, 8, 8), 255.0, np.float32), r"values in \[255, 255\]"),
])
def test_bad_images_are_refused_with_what_to_pass(images, problem):
    with pytest.raises(ValueError, match=problem + ".*float32 in \\[0, 1\\]"):
        checked_images(images)
