"""The final detector as an MLflow model: ``mlflow.pyfunc.load_model(uri).predict(images)`` gives detections.

The model is a pyfunc (:class:`DetectorModel`) whose one artifact is the checkpoint ``model_final.pth``.
Loading it rebuilds the detector from the checkpoint's own config and reads the weights with
``torch.load(weights_only=True)`` (date.runtime.checkpoint.load): no pickled ``nn.Module`` is ever opened,
unlike ``mlflow.pytorch``. The ``date`` package travels with the model (``code_paths``) and the pip
requirements are pinned to this environment's versions, so it loads where the suite is not installed.

Input: float32 ``[B, 3, H, W]``, RGB in [0, 1] (uint8 / 255, what torchvision's ``to_dtype(scale=True)``
gives), H and W free. ``predict`` runs date.inference, the evaluation's pipeline: short side to
``dataset.test_short_size`` (long side <= ``max_size``), ImageNet normalisation, zero padding to multiples of
128, ``DATEDetector.predict``, boxes back to the input's pixels. Images at the evaluation size give the detections
date.coco_eval scores; other sizes are resized from floats rather than from uint8 as the dataset does, which
moves pixels by up to 1/255.

Output: a DataFrame, one row per detection: ``image_index`` (position in the batch), ``x1 y1 x2 y2``
(xyxy in the input image's pixels), ``score``, ``category_id`` (the training data's category id).
A table is what an MLflow signature describes column by column and what serving returns as records;
per-image arrays have a different length for every image, which a TensorSpec cannot describe.

Device: CPU, or ``mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types import ColSpec, Schema, TensorSpec
from packaging.version import Version

import date
from date.inference import Detections, Inference, load_detector
from date.runtime.tracking import is_http, quick_requests

CHECKPOINT_ARTIFACT = "checkpoint"
OUTPUT_COLUMNS = (("image_index", "long"), ("x1", "float"), ("y1", "float"), ("x2", "float"), ("y2", "float"),
                  ("score", "float"), ("category_id", "long"))
# What the inference path imports (date.modeling, date.data, pandas for the output), pinned to this environment.
REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "pillow", "scipy", "pycocotools", "omegaconf",
                "hydra-core", "tqdm", "mlflow")
UPLOAD_TIMEOUT_S = 60  # per request to a server, no retries: a dead server costs a minute, not MLflow's retry minutes


class DetectorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: images in, one row per detection out (see the module docstring).

    Only ``label_to_category_id`` is pickled with the model; the detector is rebuilt from the checkpoint
    artifact in :meth:`load_context`.
    """

    def __init__(self, *, label_to_category_id: Sequence[int]):
        self.label_to_category_id = [int(c) for c in label_to_category_id]

    def load_context(self, context) -> None:
        device = torch.device((context.model_config or {}).get("device", "cpu"))
        self.inference = Inference.from_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]),
                                                   label_to_category_id=self.label_to_category_id, device=device)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        return detections_frame(self.inference(checked_images(model_input)),
                                label_to_category_id=self.label_to_category_id)


def checked_images(model_input) -> torch.Tensor:
    """``model_input`` as a float32 Tensor[B, 3, H, W] in [0, 1]; a ValueError saying what is wrong otherwise."""
    images = np.asarray(model_input)
    problem = None
    if images.ndim != 4 or images.shape[0] < 1 or images.shape[1] != 3:
        problem = f"has shape {images.shape}; it must be [B >= 1, 3, H, W]"
    elif images.dtype != np.float32:
        problem = f"has dtype {images.dtype}; it must be float32"
    elif images.size and not (images.min() >= 0.0 and images.max() <= 1.0):
        problem = f"has values in [{images.min():.4g}, {images.max():.4g}]; they must be in [0, 1]"
    if problem:
        raise ValueError(f"The detector's input {problem}: a batch of RGB images, channels first, as float32 "
                         "in [0, 1] (uint8 pixels / 255), e.g. np.asarray(pil_image, np.float32).transpose(2, 0, 1)"
                         "[None] / 255.")
    return torch.from_numpy(np.ascontiguousarray(images))


def detections_frame(detections: Sequence[Detections], *, label_to_category_id: Sequence[int]) -> pd.DataFrame:
    """One row per detection (columns OUTPUT_COLUMNS) of per-image detections whose boxes are in the input's
    pixels (date.inference.Inference's)."""
    counts = [len(d["scores"]) for d in detections]
    boxes = torch.cat([d["boxes"] for d in detections])  # [sum K, 4]
    labels = torch.cat([d["labels"] for d in detections])
    columns = {"image_index": np.repeat(np.arange(len(detections), dtype=np.int64), counts),
               **{name: boxes[:, i].numpy() for i, name in enumerate(("x1", "y1", "x2", "y2"))},
               "score": torch.cat([d["scores"] for d in detections]).numpy(),
               "category_id": np.asarray(label_to_category_id, dtype=np.int64)[labels.numpy()]}
    return pd.DataFrame(columns)


def model_signature() -> ModelSignature:
    """Input: one float32 tensor [-1, 3, -1, -1]; output: the columns of :func:`detections_frame`."""
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
                          outputs=Schema([ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS]))


def input_example() -> np.ndarray:
    """One small grey image: stored with the model (and run once by MLflow to check that it serves)."""
    return np.full((1, 3, 32, 32), 0.5, dtype=np.float32)


def pip_requirements() -> list[str]:
    """REQUIREMENTS pinned to the installed versions (public part: ``2.5.1+cu121`` -> ``2.5.1``); giving them
    spares MLflow its requirement inference, which loads the model in a subprocess."""
    return [f"{name}=={Version(importlib.metadata.version(name)).public}" for name in REQUIREMENTS]


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` inside; afterwards restored with what setting it touches:
    ``$MLFLOW_TRACKING_URI`` (set_tracking_uri exports it) and ``sys.path`` (MLflow's check that the logged
    model serves loads it, which prepends its code folder)."""
    env, path = os.environ.get("MLFLOW_TRACKING_URI"), list(sys.path)
    try:
        with _use_tracking_uri(uri), quick_requests(UPLOAD_TIMEOUT_S) if is_http(uri) else contextlib.nullcontext():
            yield
    finally:
        sys.path[:] = path
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _create_model(run_id: str, name: str) -> str:
    """A logged model of ``run_id``'s experiment carrying the run's params; returns its id.

    Model.log alone would file it under the process's current experiment (Default unless one is active).
    """
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    return client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                      params=run.data.params).model_id


def log_detector(*, tracking_uri: str, run_id: str, checkpoint: Path, label_to_category_id: Sequence[int],
                 name: str = "model") -> str:
    """Log ``checkpoint`` (a model_final.pth of date.train) to MLflow run ``run_id`` as the pyfunc model ``name``.

    The checkpoint is checked first (it loads, its class count fits ``label_to_category_id``), so a bad one
    uploads nothing. The process's MLflow state (tracking URI, active run, environment) is left as it was.

    Args:
        tracking_uri: the store of the run.
        run_id: the run the model belongs to; it is neither started nor ended here (its status is kept).
        checkpoint: model_final.pth (``{"model": state_dict, "config": resolved config, ...}``).
        label_to_category_id: contiguous label -> the dataset's category id (``CocoDetection.label_to_category_id``);
            the checkpoint does not hold it.
        name: the model's name in the run (``runs:/<run_id>/<name>``).
    Returns:
        The model's URI (``models:/<model id>``; ``runs:/<run_id>/<name>`` loads it too).
    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit ``label_to_category_id``.
        mlflow.exceptions.MlflowException, OSError, requests.RequestException: the store is unreachable or
            refuses the upload, or ``run_id`` is not in it. Nothing here is needed to finish a training: a
            caller at the end of one catches Exception and logs it.
    """
    checkpoint = Path(checkpoint)
    load_detector(checkpoint, label_to_category_id=label_to_category_id)
    with _tracking_uri(tracking_uri):
        model_id = _create_model(run_id, name)
        info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, model_id=model_id,
                         python_model=DetectorModel(label_to_category_id=label_to_category_id),
                         artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                         code_paths=[str(Path(date.__file__).parent)], pip_requirements=pip_requirements(),
                         signature=model_signature(), input_example=input_example())
    return info.model_uri
