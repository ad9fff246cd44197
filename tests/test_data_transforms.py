"""Transforms keep boxes consistent with the pixels: filled rectangles through flip / resize / crop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from date.data.build import DatasetConfig, transform_sizes
from date.data import transforms
from date.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomSizeCrop, build_transforms

SYNTH_SIZES = transform_sizes(DatasetConfig())  # the CPU synthetic preset's sizes


def _scene(h: int, w: int, box: list[int], crowd: list[int]) -> tuple[torch.Tensor, dict]:
    """Black image with a white rectangle (the object, channel 0) and a rectangle in channel 1 (crowd)."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[0, y0:y1, x0:x1] = 255
    cx0, cy0, cx1, cy1 = crowd
    image[1, cy0:cy1, cx0:cx1] = 255
    target = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([4]),
              "crowd_boxes": torch.tensor([crowd], dtype=torch.float32), "image_id": 1, "orig_size": (h, w)}
    return image, target


def _pixel_box(channel: torch.Tensor) -> list[float] | None:
    """xyxy pixel-edge box of the pixels above half intensity, or None."""
    ys, xs = torch.nonzero(channel > 0.5, as_tuple=True)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def _check(image: torch.Tensor, target: dict, tol: float = 1.5) -> None:
    assert target["image_size"] == tuple(image.shape[-2:])
    for channel, key in ((0, "boxes"), (1, "crowd_boxes")):
        pix = _pixel_box(image[channel])
        boxes = target[key]
        if len(boxes) == 0:  # dropped: at most a sliver may remain visible
            assert pix is None or (pix[2] - pix[0]) * (pix[3] - pix[1]) <= 2 * max(image.shape[-2:])
            continue
        assert pix is not None, key
        assert torch.allclose(boxes[0], torch.tensor(pix), atol=tol), (key, boxes[0].tolist(), pix)
    if len(target["boxes"]):
        assert target["labels"].tolist() == [4]


@pytest.mark.parametrize("seed", range(8))
def test_1x_flip_and_resize_keep_boxes_on_the_pixels(seed):
    tf = build_transforms(train=True, augmentation="1x", normalize=False,
                          **{**SYNTH_SIZES, "train_short_sizes": [64, 96], "max_size": 128})
    image, target = _scene(80, 120, [10, 20, 50, 60], [70, 5, 110, 30])
    torch.manual_seed(seed)
    out, t = tf(image, target)
    assert min(out.shape[-2:]) in (64, 85) and max(out.shape[-2:]) <= 128  # 96 short side capped by max 128
    _check(out, t)


def test_flip_exact():
    tf = build_transforms(train=True, augmentation="1x", normalize=False,
                          **{**SYNTH_SIZES, "train_short_sizes": [80], "max_size": 200})
    image, target = _scene(80, 120, [10, 20, 50, 60], [70, 5, 110, 30])
    flipped = []
    for seed in range(10):
        torch.manual_seed(seed)
        out, t = tf(image, target)
        assert out.shape[-2:] == (80, 120)  # no resize: exact pixels
        if t["boxes"][0, 0] > 60:
            flipped.append(seed)
            assert t["boxes"].tolist() == [[70.0, 20.0, 110.0, 60.0]]
            assert t["crowd_boxes"].tolist() == [[10.0, 5.0, 50.0, 30.0]]
        _check(out, t, tol=0)
    assert 0 < len(flipped) < 10


@pytest.mark.parametrize("seed", range(24))
def test_3x_multiscale_crop_keeps_boxes_on_the_pixels(seed):
    tf = build_transforms(train=True, augmentation="3x", normalize=False, **SYNTH_SIZES)
    image, target = _scene(128, 128, [20, 30, 90, 100], [100, 0, 128, 40])
    torch.manual_seed(seed)
    out, t = tf(image, target)
    assert max(out.shape[-2:]) <= 128
    _check(out, t, tol=2.0)


def test_crop_drops_boxes_cropped_away():
    tf = build_transforms(train=True, augmentation="3x", normalize=False, **SYNTH_SIZES)
    image, target = _scene(128, 128, [0, 0, 12, 12], [116, 116, 128, 128])
    kept = []
    for seed in range(40):
        torch.manual_seed(seed)
        out, t = tf(image, target)
        _check(out, t, tol=2.0)
        kept.append(len(t["boxes"]))
    assert 0 in kept and 1 in kept


def test_synthetic_sizes_never_exceed_128():
    for augmentation in ("1x", "3x"):
        tf = build_transforms(train=True, augmentation=augmentation, normalize=False, **SYNTH_SIZES)
        image, target = _scene(128, 128, [20, 30, 90, 100], [100, 0, 128, 40])
        for seed in range(200):
            torch.manual_seed(seed)
            out, _ = tf(image, target)
            assert max(out.shape[-2:]) <= 128
            if augmentation == "1x":
                assert out.shape[-2:] == (128, 128)


def test_eval_resize_and_normalisation():
    tf = build_transforms(train=False, **{**SYNTH_SIZES, "test_short_size": 40, "max_size": 100})
    image, target = _scene(80, 120, [10, 20, 50, 60], [70, 5, 110, 30])
    out, t = tf(image, target)
    assert out.dtype == torch.float32 and out.shape == (3, 40, 60) and t["image_size"] == (40, 60)
    assert t["orig_size"] == (80, 120) and t["image_id"] == 1
    assert torch.allclose(t["boxes"], torch.tensor([[5.0, 10.0, 25.0, 30.0]]))
    black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(out[:, 39, 0], black, atol=1e-5)  # ImageNet-normalised zero pixel


def test_same_seed_same_augmentation():
    tf = build_transforms(train=True, augmentation="3x", **SYNTH_SIZES)
    image, target = _scene(128, 128, [20, 30, 90, 100], [100, 0, 128, 40])
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outs.append(tf(image, target))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1]["boxes"], outs[1][1]["boxes"])


def test_only_public_torchvision_names_are_imported():
    """Private torchvision modules (``v2._utils``) change without notice between releases."""
    tree = ast.parse(Path(transforms.__file__).read_text())
    names = [f"{n.module}.{a.name}" if isinstance(n, ast.ImportFrom) else a.name
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    private = [name for name in names
               if name.startswith("torchvision") and any(part.startswith("_") for part in name.split("."))]
    assert names and private == []


def test_crop_reads_the_size_the_image_and_boxes_share():
    image = tv_tensors.Image(torch.zeros(3, 40, 60, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, 60.0, 40.0]]), format="XYXY", canvas_size=(40, 60))
    torch.manual_seed(0)
    out_image, out_boxes = RandomSizeCrop(min_size=100, max_size=200)(image, boxes)  # window clipped to the image
    assert out_image.shape[-2:] == (40, 60) and out_boxes.canvas_size == (40, 60)
    wrong = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(41, 60))
    with pytest.raises(ValueError, match="multiple HxW"):
        RandomSizeCrop(min_size=10, max_size=20)(image, wrong)
    with pytest.raises(TypeError, match="No image"):
        RandomSizeCrop(min_size=10, max_size=20)({"name": "no image, no boxes"})
