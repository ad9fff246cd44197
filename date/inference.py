"""The one inference path: images -> detections in the image's own pixels (torchvision's GeneralizedRCNNTransform
and postprocess, written once).

1. resize: short side to the checkpoint's ``dataset.test_short_size``, long side <= ``max_size`` (the eval recipe
   of date/data/transforms.py);
2. normalise with the ImageNet mean and std;
3. pad with zeros at the bottom / right to multiples of SIZE_DIVISIBILITY (date.data.loader.collate): a batch;
4. run the inference branch and decode it: ``DATEDetector.predict_branches`` (date/modeling/decode.py: o2o top-k
   without NMS, o2m with NMS), under autocast if asked: boxes in the resized image's pixels;
5. rescale the boxes to the input image's pixels.

:class:`Inference` does 1-5 on float images in [0, 1] (date.predict, the logged MLflow model). The evaluation's data
loader does 1-3 itself, per image and from uint8 (date/data), and 4-5 here (:func:`run_branches`, :func:`rescale`:
date.coco_eval, analysis.duplicates). date.export exports step 4 as a graph, steps 1-3 and 5 left to its caller.
Images at the evaluation size get the detections the evaluation scores; other sizes are resized here from floats
rather than from uint8 as the dataset does, which moves pixels by up to 1/255.

Legend: B = images, K = detections of one image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from date.data.build import transform_sizes
from date.data.loader import collate
from date.data.transforms import IMAGENET_MEAN, IMAGENET_STD, geometric_transforms
from date.modeling.build import checkpoint_config, checkpoint_num_classes, detector_from_checkpoint
from date.modeling.detector import DATEDetector
from date.runtime import checkpoint as ckpt
from date.runtime.checkpoint import CheckpointError

SIZE_DIVISIBILITY = 128  # the eval loader's padding (date.data.loader.collate's default)

Detections = dict[str, Tensor]  # "boxes" [K, 4] xyxy, "scores" [K], "labels" [K] int64 (contiguous labels)


def load_detector(checkpoint: Path, *, label_to_category_id: Sequence[int],
                  saved: dict | None = None) -> tuple[DATEDetector, v2.Transform]:
    """The checkpoint's detector in eval mode on the CPU and its evaluation resize; ``saved``: the checkpoint
    already loaded (date.predict reads its category ids first). Raises CheckpointError."""
    saved = ckpt.load(checkpoint) if saved is None else saved
    classes = checkpoint_num_classes(saved, checkpoint)
    if classes != len(label_to_category_id):
        raise CheckpointError(f"{checkpoint} predicts {classes} classes but label_to_category_id has "
                              f"{len(label_to_category_id)} entries ({list(label_to_category_id)}). Pass the "
                              "label_to_category_id of the dataset the checkpoint was trained on.")
    detector = detector_from_checkpoint(saved, num_classes=classes).eval()
    resize = geometric_transforms(train=False, **transform_sizes(checkpoint_config(saved).dataset))
    return detector, resize


def preprocess(images: Tensor, resize: v2.Transform) -> tuple[Tensor, list[tuple[int, int]]]:
    """Steps 1-3 on images [B, 3, H0, W0] in [0, 1] (one size): (the batch [B, 3, Hp, Wp], each image's resized
    (h, w))."""
    resized = resize(tv_tensors.Image(images)).as_subclass(torch.Tensor)  # [B, 3, h, w]
    h, w = resized.shape[-2:]
    normalised = F.normalize(resized, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    batch, _ = collate([(image, {}) for image in normalised], size_divisibility=SIZE_DIVISIBILITY)
    return batch, [(h, w)] * len(batch)


@torch.no_grad()
def run_branches(model: torch.nn.Module, images: Tensor, image_sizes: Sequence[tuple[int, int]],
                 branches: Sequence[str | None] = (None,), *, device: torch.device,
                 amp_dtype: Optional[torch.dtype] = None, nms: bool | None = None,
                 memory_format: torch.memory_format = torch.preserve_format) -> list[list[Detections]]:
    """Step 4: per branch (None: the inference branch), per image, the detections in the resized image's pixels.

    Args:
        model: a detector with ``predict_branches`` (DATEDetector; not DDP-wrapped), in eval mode.
        images (Tensor[B, 3, Hp, Wp]): normalised and padded; image_sizes: each image's (h, w) before padding.
        amp_dtype: run the forward under autocast to this dtype (None: no autocast).
        nms: as ``DATEDetector.predict``'s (None: each branch's own decoding).
        memory_format: the images' on the device; the model's (channels_last: NHWC convolutions throughout).
    """
    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        return model.predict_branches(images, [tuple(s) for s in image_sizes],
                                      branches, nms=nms)


def rescale(detections: Sequence[Detections], image_sizes: Sequence[tuple[int, int]],
            original_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
    """Step 5: boxes from each resized image's pixels (h, w) to its original's (h0, w0), on the CPU in float32."""
    out = []
    for d, (h, w), (h0, w0) in zip(detections, image_sizes, original_sizes):
        boxes = d["boxes"].detach().float().cpu() * torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h])  # [K, 4]
        out.append({"boxes": boxes, "scores": d["scores"].detach().float().cpu(), "labels": d["labels"].cpu()})
    return out


@dataclass
class Inference:
    """A checkpoint's detector with its evaluation resize: steps 1-5 (see the module docstring)."""

    detector: DATEDetector
    resize: v2.Transform  # the checkpoint's evaluation resize (load_detector)
    device: torch.device = torch.device("cpu")
    amp_dtype: Optional[torch.dtype] = None  # autocast of the forward (None: none)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, *, label_to_category_id: Sequence[int], saved: dict | None = None,
                        device: torch.device = torch.device("cpu"),
                        amp_dtype: Optional[torch.dtype] = None) -> "Inference":
        """:func:`load_detector`, the detector moved to ``device``. Raises CheckpointError."""
        detector, resize = load_detector(checkpoint, label_to_category_id=label_to_category_id, saved=saved)
        return cls(detector.to(device), resize, device, amp_dtype)

    def __call__(self, images: Tensor) -> list[Detections]:
        """Detections of images [B, 3, H0, W0] (one size, float in [0, 1]), boxes in their pixels, on the CPU."""
        batch, image_sizes = preprocess(images, self.resize)
        [detections] = run_branches(self.detector, batch, image_sizes, device=self.device, amp_dtype=self.amp_dtype)
        return rescale(detections, image_sizes, [tuple(images.shape[-2:])] * len(images))
