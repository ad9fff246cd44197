"""Detection transforms (torchvision.transforms.v2 on tv_tensors.BoundingBoxes).

Recipes (sizes in pixels, parameters so that each dataset preset uses its own scale):
- ``1x``: horizontal flip, resize the short side to one of ``train_short_sizes`` (long side <= ``max_size``).
- ``3x``: DETR-style: flip, then with probability 1/2 each: (a) short side from ``multiscale_short_sizes``
  (long side <= ``max_size``); (b) short side from ``multiscale_crop_resize``, a random crop with sides in
  ``multiscale_crop_size`` = [min, max], then (a).
- eval: short side ``test_short_size``, long side <= ``max_size``.
Then boxes are clamped to the image, boxes left empty (e.g. cropped away) are dropped, and the image
becomes float32 normalised with the ImageNet mean / std. Crowd regions travel in the same
BoundingBoxes (flagged), so every geometric op moves them identically.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from date.choice import Choice

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _sample_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """(H, W) that the sample's image and boxes share, as v2's own transforms query it (v2.query_size is public
    only from torchvision 0.20 on; F.get_size is public in every version this suite supports)."""
    sizes = {tuple(F.get_size(inpt)) for inpt in flat_inputs if isinstance(inpt, (torch.Tensor, Image.Image))}
    if not sizes:
        raise TypeError("No image, video, mask, bounding box or keypoints were found in the sample")
    if len(sizes) > 1:
        raise ValueError(f"Found multiple HxW dimensions in the sample: {sorted(sizes)}")
    (height, width), = sizes
    return height, width


class RandomSizeCrop(v2.Transform):
    """Crop a random window with sides in [min_size, max_size] (clipped to the image): DETR's
    ``RandomSizeCrop``; RNG from torch's global generator (seeded per sample by the dataset)."""

    def __init__(self, *, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _sample_size(flat_inputs)
        h = int(torch.randint(min(self.min_size, height), min(self.max_size, height) + 1, ()))
        w = int(torch.randint(min(self.min_size, width), min(self.max_size, width) + 1, ()))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return dict(top=top, left=left, height=h, width=w)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)

    # torchvision < 0.21 calls the private names
    _get_params = make_params
    _transform = transform


# The two training recipes: 1x = resize + flip; 3x = DETR-style multi-scale + crop (schedule.augmentation)
Augmentation = Choice("Augmentation", [("1x", "1x"), ("3x", "3x")])


def _labels_and_crowd(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return sample["labels"], sample["is_crowd"]


def geometric_transforms(
    *,
    train: bool,
    augmentation: str = "1x",
    train_short_sizes: Sequence[int],
    max_size: int,
    test_short_size: int,
    multiscale_short_sizes: Sequence[int],
    multiscale_crop_resize: Sequence[int],
    multiscale_crop_size: Sequence[int],
) -> v2.Transform:
    """The resize / flip / crop part of a recipe (see the module docstring); the sizes are the dataset
    config's (date.data.build.transform_sizes)."""
    if not train:
        # RandomShortestSize with one size: v2.Resize refuses max_size == size
        return v2.RandomShortestSize(min_size=[int(test_short_size)], max_size=int(max_size))
    if augmentation == "1x":
        return v2.Compose([
            v2.RandomHorizontalFlip(0.5),
            v2.RandomShortestSize(min_size=[int(s) for s in train_short_sizes], max_size=int(max_size)),
        ])
    if augmentation == "3x":
        lo, hi = (int(s) for s in multiscale_crop_size)
        multiscale = v2.RandomShortestSize(min_size=[int(s) for s in multiscale_short_sizes], max_size=int(max_size))
        return v2.Compose([
            v2.RandomHorizontalFlip(0.5),
            v2.RandomChoice([
                multiscale,
                v2.Compose([
                    v2.RandomShortestSize(min_size=[int(s) for s in multiscale_crop_resize]),
                    RandomSizeCrop(min_size=lo, max_size=hi),
                    multiscale,
                ]),
            ]),
        ])
    raise ValueError(f"augmentation must be '1x' or '3x', got {augmentation!r}")


class DetectionTransform:
    """Callable ``(image, target) -> (image, target)`` applying a geometric recipe, then box cleaning
    and normalisation.

    Input: a PIL RGB image (or uint8 Tensor[3, H0, W0]) and a target with ``boxes`` float Tensor[K, 4]
    xyxy, ``labels`` int64 Tensor[K], ``crowd_boxes`` float Tensor[J, 4] xyxy (other keys are kept).
    Output: float32 Tensor[3, H, W] (ImageNet-normalised, or 0..1 if ``normalize`` is False) and the
    target with boxes / labels / crowd_boxes transformed (K' <= K, J' <= J) and ``image_size`` = (H, W).
    Randomness comes from torch's global RNG: seed it per sample (CocoDetection does).
    """

    def __init__(self, *, geometric: v2.Transform, normalize: bool = True) -> None:
        steps: list[v2.Transform] = [
            geometric,
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_and_crowd),
            v2.ToDtype(torch.float32, scale=True),
        ]
        if normalize:
            steps.append(v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: Image.Image | torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        img = tv_tensors.Image(F.pil_to_tensor(image) if isinstance(image, Image.Image) else image)
        boxes = target["boxes"].reshape(-1, 4).float()
        crowd = target.get("crowd_boxes", torch.zeros(0, 4)).reshape(-1, 4).float()
        sample = {
            "image": img,
            "boxes": tv_tensors.BoundingBoxes(torch.cat([boxes, crowd]), format="XYXY",
                                              canvas_size=tuple(img.shape[-2:])),
            "labels": torch.cat([target["labels"].long(), torch.full((len(crowd),), -1, dtype=torch.long)]),
            "is_crowd": torch.cat([torch.zeros(len(boxes), dtype=torch.bool), torch.ones(len(crowd), dtype=torch.bool)]),
        }
        out = self.pipeline(sample)
        all_boxes = out["boxes"].as_subclass(torch.Tensor).float()
        is_crowd = out["is_crowd"]
        image_out = out["image"].as_subclass(torch.Tensor)
        target = dict(target)
        target["boxes"] = all_boxes[~is_crowd].reshape(-1, 4)
        target["labels"] = out["labels"][~is_crowd]
        target["crowd_boxes"] = all_boxes[is_crowd].reshape(-1, 4)
        target["image_size"] = (int(image_out.shape[-2]), int(image_out.shape[-1]))
        return image_out, target


def build_transforms(*, train: bool, augmentation: str = "1x", normalize: bool = True, **sizes: Any) -> DetectionTransform:
    """Recipe by name: ``train`` with ``augmentation`` "1x" | "3x", or eval; ``sizes`` are the keyword
    arguments of :func:`geometric_transforms` (train_short_sizes, max_size, ...)."""
    return DetectionTransform(geometric=geometric_transforms(train=train, augmentation=augmentation, **sizes),
                              normalize=normalize)
