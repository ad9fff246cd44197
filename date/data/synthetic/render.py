"""Drawing one scene of the synthetic benchmark: its items, their placement and their pixels.

Scenes are crowded, objects overlap in clusters (same-size, often same-class neighbours at box IoU 0.3-0.7),
occlude each other (painted back to front, largest first, each labelled object keeps at least ``min_visible``
of its pixels), are cut by the border, span a log-uniform range of sizes and aspect ratios, come in classes
with confusable pairs (same shape, different colour or texture) and may share the canvas with unlabelled
distractor shapes of the same colours, on textured, noisy backgrounds.

Every image is drawn from its own ``numpy.random.Generator`` seeded with (seed, split, index), so an image
does not depend on any other, nor on the process that draws it.

Legend: S = image side in pixels; h, w = an item's box in pixels. Local shape masks are bool [h, w];
colours are float32 [..., 3] in 0..255.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

from .params import CLASSES, DISTRACTOR_SHAPES, SyntheticParams

SPLIT_CODES = {"train": 0, "val": 1}


def shape_mask(shape: str, h: int, w: int, orientation: int = 0) -> np.ndarray:
    """Boolean mask [h, w] of ``shape`` inscribed in an h x w box (orientation 0..3 for triangles)."""
    v = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None]  # [h, 1] in (-1, 1)
    u = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :]  # [1, w]
    if shape == "rect":
        return np.ones((h, w), dtype=bool)
    if shape == "ellipse":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.35)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # apex up / down / left / right
        if orientation == 0:
            return np.abs(u) <= (v + 1) / 2
        if orientation == 1:
            return np.abs(u) <= (1 - v) / 2
        if orientation == 2:
            return np.abs(v) <= (u + 1) / 2
        return np.abs(v) <= (1 - u) / 2
    # distractors; bar half-width 0.3 so that they stay visible at small sizes
    if shape == "plus":
        return (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)
    if shape == "cross":
        return np.abs(np.abs(u) - np.abs(v)) <= 0.35
    if shape == "frame":
        return np.maximum(np.abs(u), np.abs(v)) >= 0.6
    raise ValueError(f"unknown shape {shape!r}")


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth, desaturated colour field with optional stripes: float32 [S, S, 3]."""
    grid = rng.uniform(50, 200, size=(4, 4, 3))
    grid = 0.6 * grid.mean(axis=2, keepdims=True) + 0.4 * grid  # desaturate: objects pop by colour
    bg = np.asarray(
        Image.fromarray(grid.astype(np.uint8)).resize((size, size), Image.BILINEAR), dtype=np.float32
    )
    if rng.random() < 0.5:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24) * size / 128
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        bg += rng.uniform(5, 15) * wave[..., None]
    return bg


def _fill(rng: np.random.Generator, colour: Sequence[int], texture: str, h: int, w: int) -> np.ndarray:
    """Object colour with jitter and texture: float32 [h, w, 3]."""
    base = (np.asarray(colour, np.float32) + rng.normal(0, 12, 3)) * rng.uniform(0.85, 1.1)
    fill = np.empty((h, w, 3), np.float32)
    fill[:] = base
    if texture != "solid":
        yy, xx = np.mgrid[0:h, 0:w]
        if texture == "stripes":
            period = max(3.0, max(h, w) / 5)
            on = ((xx + yy) % period) < period / 2
        else:  # checker
            cell = max(2.0, max(h, w) / 6)
            on = ((xx // cell + yy // cell) % 2) == 0
        fill[on] = np.asarray((235, 235, 240), np.float32)
    return fill


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@dataclass
class _Item:
    size: float  # longer side before aspect
    aspect: float  # w / h
    label: int  # class index, or -1 for a distractor
    anchor: int  # index of the item this one clusters around, or -1
    shape: str
    colour: tuple[int, int, int]
    texture: str


def _sample_items(p: SyntheticParams, rng: np.random.Generator) -> list[_Item]:
    def aspect_for(size: float) -> float:
        # thin objects keep at least 4 px on the short side (slivers are noise, not objects)
        limit = max(1.0, min(p.max_aspect_ratio, size / 4))
        return float(math.exp(rng.uniform(-math.log(limit), math.log(limit))))

    lo, hi = math.log(p.min_object_size), math.log(p.max_object_size)
    items: list[_Item] = []
    for i in range(int(rng.integers(p.min_objects, p.max_objects + 1))):
        # Only objects of at least two P3 strides gather clusters: a pile of 6 px objects in one
        # 10 px spot cannot be told apart by any stride-8 detector, which caps every variant's AP alike.
        anchors = [k for k, item in enumerate(items) if item.label >= 0 and item.size >= p.min_cluster_size]
        if anchors and rng.random() < p.cluster_prob:
            j = anchors[int(rng.integers(len(anchors)))]
            a = items[j]
            label = a.label if rng.random() < 0.5 else int(rng.integers(p.num_classes))
            size = max(p.min_object_size, a.size * rng.uniform(0.75, 1.0))
            aspect = min(max(a.aspect * float(math.exp(rng.uniform(-0.2, 0.2))), 1 / p.max_aspect_ratio),
                         p.max_aspect_ratio)
        else:
            j, label = -1, int(rng.integers(p.num_classes))
            size = float(math.exp(rng.uniform(lo, hi)))
            aspect = aspect_for(size)
        c = CLASSES[label]
        items.append(_Item(size, aspect, label, j, c.shape, c.colour, c.texture))
    for _ in range(int(rng.integers(0, p.max_distractors + 1))):
        size = float(math.exp(rng.uniform(math.log(max(p.min_object_size, 10.0)), hi)))
        colour = CLASSES[int(rng.integers(p.num_classes))].colour
        shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        items.append(_Item(size, aspect_for(size) ** 0.5, -1, -1, shape, colour, "solid"))
    return items


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior

@dataclass
class _Scene:
    """What is painted so far. Item k is 1-based in ``owner`` and in the per-item arrays (0 = background)."""

    canvas: np.ndarray  # float32 [S, S, 3]
    owner: np.ndarray  # int32 [S, S]: the item painted on top at each pixel
    area: np.ndarray  # [items + 1] in-image pixels of each painted item
    visible: np.ndarray  # [items + 1] of those, the ones not painted over since
    labelled: np.ndarray  # bool [items + 1]
    boxes: dict[int, list[int]]  # 0-based item -> its box [x0, y0, x1, y1] (labelled items only)


class _Placement(NamedTuple):
    x0: int  # the item's box origin; may lie outside the image
    y0: int
    window: tuple[int, int, int, int]  # (cx0, cy0, cx1, cy1): the part of the box inside the image
    pixels: np.ndarray  # bool [cy1 - cy0, cx1 - cx0]: the item's mask in the window
    lost: np.ndarray  # [items + 1]: pixels the item takes from each painted item


def _item_box(it: _Item) -> tuple[int, int]:
    """(w, h) in whole pixels, at least 3 each."""
    w = h = it.size
    if it.aspect >= 1:
        h = it.size / it.aspect
    else:
        w = it.size * it.aspect
    return max(3, int(round(w))), max(3, int(round(h)))


def _draw_origin(p: SyntheticParams, rng: np.random.Generator, anchor_box: Optional[list[int]], w: int,
                 h: int) -> tuple[int, int]:
    """One candidate box origin (x0, y0) for a w x h item."""
    S = p.image_size
    if anchor_box is not None:  # cluster: put it at IoU 0.3..0.7 with its anchor
        ax0, ay0, ax1, ay1 = anchor_box
        for _ in range(30):
            x0 = int(round((ax0 + ax1 - w) / 2 + rng.uniform(-0.6, 0.6) * ((ax1 - ax0) + w) / 2))
            y0 = int(round((ay0 + ay1 - h) / 2 + rng.uniform(-0.6, 0.6) * ((ay1 - ay0) + h) / 2))
            if 0.3 <= _box_iou(anchor_box, (x0, y0, x0 + w, y0 + h)) <= 0.7:
                break
        return x0, y0
    if rng.random() < p.border_prob or w > S or h > S:  # anywhere, partly outside allowed
        x0 = int(rng.integers(-int(w * (1 - p.min_inside)), S - int(math.ceil(w * p.min_inside)) + 1))
        y0 = int(rng.integers(-int(h * (1 - p.min_inside)), S - int(math.ceil(h * p.min_inside)) + 1))
        return x0, y0
    return int(rng.integers(0, S - w + 1)), int(rng.integers(0, S - h + 1))  # fully inside


def _place(p: SyntheticParams, rng: np.random.Generator, scene: _Scene, mask: np.ndarray,
           anchor_box: Optional[list[int]]) -> Optional[_Placement]:
    """Up to 20 tries at a place that keeps ``min_inside`` of the item in the image and ``min_visible`` of
    every labelled painted item; None if none does (the item is left out)."""
    S, (h, w) = p.image_size, mask.shape
    full = mask.sum()
    for _ in range(20):
        x0, y0 = _draw_origin(p, rng, anchor_box, w, h)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, S), min(y0 + h, S)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        m = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        inside = m.sum()
        if inside < p.min_inside * full or inside == 0:
            continue
        # pixels this item would take from each painted item: none may drop under min_visible
        lost = np.bincount(scene.owner[cy0:cy1, cx0:cx1][m], minlength=len(scene.area))
        if np.any(scene.labelled & (scene.visible - lost < p.min_visible * scene.area)):
            continue
        return _Placement(x0, y0, (cx0, cy0, cx1, cy1), m, lost)
    return None


def _paint(rng: np.random.Generator, scene: _Scene, k: int, it: _Item, mask: np.ndarray, at: _Placement) -> None:
    """Paint item ``k`` (0-based) at ``at`` and record what it covers."""
    (h, w), (cx0, cy0, cx1, cy1), m = mask.shape, at.window, at.pixels
    fill = _fill(rng, it.colour, it.texture, h, w)[cy0 - at.y0 : cy1 - at.y0, cx0 - at.x0 : cx1 - at.x0]
    # A dark outline keeps the extent of an occluded object visible where it overlaps a look-alike
    # (two red rectangles would otherwise merge into one blob and its box would be guesswork).
    fill[outline(mask)[cy0 - at.y0 : cy1 - at.y0, cx0 - at.x0 : cx1 - at.x0] & m] *= 0.45
    scene.canvas[cy0:cy1, cx0:cx1][m] = fill[m]
    scene.visible -= at.lost
    scene.owner[cy0:cy1, cx0:cx1][m] = k + 1
    scene.area[k + 1] = scene.visible[k + 1] = m.sum()
    if it.label >= 0:
        scene.labelled[k + 1] = True
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        scene.boxes[k] = [cx0 + int(cols[0]), cy0 + int(rows[0]), cx0 + int(cols[-1]) + 1, cy0 + int(rows[-1]) + 1]


def render_image(p: SyntheticParams, split: str, index: int) -> tuple[np.ndarray, list[tuple[int, list[int]]]]:
    """Draw one scene. Returns (uint8 [S, S, 3] RGB, [(label, [x0, y0, x1, y1]), ...]) with boxes in
    pixel edges (x1 exclusive), tight around each labelled object's pixels inside the image."""
    rng = np.random.default_rng(np.random.SeedSequence([p.seed, SPLIT_CODES[split], index]))
    S = p.image_size
    canvas = background(rng, S)
    items = _sample_items(p, rng)
    n = len(items) + 1
    scene = _Scene(canvas, np.zeros((S, S), np.int32), np.zeros(n), np.zeros(n), np.zeros(n, bool), {})
    # Painter's order: largest first, so small objects occlude large ones (stable: anchors first).
    order = sorted(range(len(items)), key=lambda k: -items[k].size)
    for k in order:
        it = items[k]
        w, h = _item_box(it)
        mask = shape_mask(it.shape, h, w, int(rng.integers(4)))
        placement = _place(p, rng, scene, mask, scene.boxes.get(it.anchor))
        if placement is not None:  # else no acceptable place: leave it out
            _paint(rng, scene, k, it, mask, placement)
    canvas += rng.normal(0, p.noise, canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    # Annotations in painting order (largest first): deterministic and independent of the id map.
    return image, [(items[k].label, scene.boxes[k]) for k in order if k in scene.boxes]
