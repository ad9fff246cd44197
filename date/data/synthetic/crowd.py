"""Drawing one crowd scene (``dataset=synthetic_crowd``): pedestrians in rows and groups that overlap heavily, as in
CrowdHuman, so that NMS has true neighbours to remove.

A person is a figure of head, torso and legs in a box of width / height 0.3-0.5. Most people join a group: a row
of 2-5 people side by side (each a fraction of a width from the last) or standing behind the row, a little
higher and smaller. The annotation is CrowdHuman's: the full-body box ``fbox`` of the whole figure, amodal (also
where others hide it) and unclipped (people cut by the border extend past the image), the visible box ``vbox``
and the head box ``hbox``. Distant crowds of tiny figures are ignore regions (``tag: mask``, ``extra.ignore: 1``),
as CrowdHuman marks crowds too small to annotate one by one.

Occlusion follows depth: a person whose feet are lower stands in front. A person is placed only where every
person (it included) keeps ``min_visible`` of its in-image pixels visible, and ``min_inside`` of its pixels inside
the image; people that find no such place in 20 tries are left out.

Every image is drawn from its own ``numpy.random.Generator`` seeded with (seed, split, index), as render.py's.

Legend: S = image side in pixels; h, w = a figure's box in pixels; masks are bool [h, w].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import numpy as np

from .params import SyntheticParams
from .render import SPLIT_CODES, background, outline

MIN_ASPECT, MAX_ASPECT = 0.3, 0.5  # a pedestrian's full-body box: width / height
SKIN = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (241, 194, 125))


def person_mask(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(whole figure, head, legs) masks [h, w] of a person filling an h x w box: head at the top centre, torso
    with shoulders the box's width, two legs to the bottom edge."""
    v = (np.arange(h, dtype=np.float32) + 0.5)[:, None] / h  # [h, 1] in (0, 1), down
    u = (np.arange(w, dtype=np.float32) + 0.5)[None, :] / w  # [1, w] in (0, 1), right
    head = ((u - 0.5) / 0.2) ** 2 + ((v - 0.075) / 0.075) ** 2 <= 1.0
    torso = (v >= 0.15) & (v < 0.56) & (np.abs(u - 0.5) <= 0.5 - 0.25 * np.clip((v - 0.15) / 0.41, 0, 1) * 0.4)
    neck = (v >= 0.12) & (v < 0.17) & (np.abs(u - 0.5) <= 0.1)
    legs = (v >= 0.56) & ((np.abs(u - 0.33) <= 0.14) | (np.abs(u - 0.67) <= 0.14))
    return head | neck | torso | legs, head, legs


@dataclass
class _Person:
    x0: int  # full-body box origin; may lie outside the image
    y0: int
    w: int
    h: int

    @property
    def feet(self) -> int:  # depth: larger = nearer the camera, painted later
        return self.y0 + self.h

    def box(self) -> list[int]:
        return [self.x0, self.y0, self.x0 + self.w, self.y0 + self.h]


@dataclass
class _Crowd:
    """The people placed so far, as a depth-ordered owner map: ``owner`` holds 1 + the index of the nearest person
    at each pixel (0: none), ``depth`` that person's feet row."""

    size: int
    min_visible: float
    min_inside: float
    people: list[_Person] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    area: list[int] = field(default_factory=list)  # in-image pixels of each person
    visible: list[int] = field(default_factory=list)
    owner: np.ndarray = field(init=False)
    depth: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.owner = np.zeros((self.size, self.size), np.int32)
        self.depth = np.full((self.size, self.size), -(10 ** 6), np.int32)

    def try_add(self, person: _Person) -> bool:
        """Add ``person`` if it and everyone placed keep ``min_visible`` (and it ``min_inside``)."""
        S = self.size
        mask = person_mask(person.h, person.w)[0]
        cx0, cy0 = max(person.x0, 0), max(person.y0, 0)
        cx1, cy1 = min(person.x0 + person.w, S), min(person.y0 + person.h, S)
        if cx1 <= cx0 or cy1 <= cy0:
            return False
        m = mask[cy0 - person.y0 : cy1 - person.y0, cx0 - person.x0 : cx1 - person.x0]
        inside = int(m.sum())
        if inside == 0 or inside < self.min_inside * mask.sum():
            return False
        in_front = m & (person.feet >= self.depth[cy0:cy1, cx0:cx1])  # pixels it wins (a tie: the later, painted later)
        lost = np.bincount(self.owner[cy0:cy1, cx0:cx1][in_front], minlength=len(self.people) + 1)[1:]
        own = int(in_front.sum())
        if own < self.min_visible * inside:
            return False
        if any(v - l < self.min_visible * a for v, l, a in zip(self.visible, lost, self.area)):
            return False
        for k, taken in enumerate(lost):
            self.visible[k] -= int(taken)
        self.owner[cy0:cy1, cx0:cx1][in_front] = len(self.people) + 1
        self.depth[cy0:cy1, cx0:cx1][in_front] = person.feet
        self.people.append(person)
        self.masks.append(mask)
        self.area.append(inside)
        self.visible.append(own)
        return True


def _new_person(p: SyntheticParams, rng: np.random.Generator) -> _Person:
    """A person of log-uniform height anywhere (partly outside with ``border_prob``)."""
    S = p.image_size
    h = int(round(math.exp(rng.uniform(math.log(p.min_object_size), math.log(p.max_object_size)))))
    w = max(3, int(round(h * rng.uniform(MIN_ASPECT, MAX_ASPECT))))
    if rng.random() < p.border_prob:
        x0 = int(rng.integers(-w // 2, S - w // 2 + 1))
        y0 = int(rng.integers(-h // 3, S - h // 2 + 1))
    else:
        x0, y0 = int(rng.integers(0, max(1, S - w + 1))), int(rng.integers(0, max(1, S - h + 1)))
    return _Person(x0, y0, w, h)


def _neighbour(p: SyntheticParams, rng: np.random.Generator, a: _Person) -> _Person:
    """A person beside ``a`` in its row (same feet, similar height) or just behind it (higher, smaller)."""
    behind = rng.random() < 0.3
    scale = rng.uniform(0.75, 0.95) if behind else rng.uniform(0.9, 1.1)
    h = max(int(p.min_object_size * 0.8), int(round(a.h * scale)))
    w = max(3, int(round(h * rng.uniform(MIN_ASPECT, MAX_ASPECT))))
    step = rng.uniform(0.1, 0.9) * (a.w + w) / 2 * rng.choice((-1, 1))  # centre to centre, in widths
    feet = a.feet - (int(round(rng.uniform(0.05, 0.2) * a.h)) if behind else int(round(rng.normal(0, 0.03 * a.h))))
    x0 = int(round(a.x0 + a.w / 2 + step - w / 2))
    return _Person(x0, feet - h, w, h)


def _distant_crowd(p: SyntheticParams, rng: np.random.Generator, canvas: np.ndarray) -> list[int]:
    """Paint a band of tiny figures (rows of 5-9 px tall people, too small to annotate one by one) in the upper
    half of the image and return its box [x0, y0, x1, y1]."""
    S = p.image_size
    bw, bh = max(8, int(rng.uniform(0.2, 0.45) * S)), max(6, int(rng.uniform(0.06, 0.14) * S))
    x0, y0 = int(rng.integers(0, S - bw + 1)), int(rng.integers(0, max(1, S // 2 - bh) + 1))
    fh = int(rng.integers(5, 10))
    rows = max(1, math.ceil((bh - fh) / (fh * 0.5)) + 1)  # each row half a figure below the last
    for r in range(rows):  # far (top) rows first
        y = y0 + min(bh - fh, int(round(r * fh * 0.5))) if bh >= fh else y0
        x = x0 + int(rng.integers(0, 3))
        while x < x0 + bw - 1:
            fw = max(2, int(round(fh * rng.uniform(MIN_ASPECT, MAX_ASPECT))))
            mask = person_mask(fh, fw)[0][: y0 + bh - y, : x0 + bw - x]  # cut at the band's edges
            canvas[y : y + mask.shape[0], x : x + mask.shape[1]][mask] = rng.uniform(30, 220, 3)
            x += max(2, int(round(fw * rng.uniform(0.6, 1.0))))
    return [x0, y0, x0 + bw, y0 + bh]


def _paint_person(rng: np.random.Generator, canvas: np.ndarray, person: _Person) -> None:
    """Paint ``person`` (all of its in-image pixels: nearer people are painted after it)."""
    S = canvas.shape[0]
    whole, head, legs = person_mask(person.h, person.w)
    fill = np.empty((person.h, person.w, 3), np.float32)
    fill[:] = rng.uniform(20, 235, 3)  # shirt
    fill[legs] = rng.uniform(20, 160, 3)  # trousers
    fill[head] = np.asarray(SKIN[int(rng.integers(len(SKIN)))], np.float32) * rng.uniform(0.85, 1.1)
    fill[outline(whole)] *= 0.45  # a dark outline keeps neighbours apart, as render.py's
    cx0, cy0 = max(person.x0, 0), max(person.y0, 0)
    cx1, cy1 = min(person.x0 + person.w, S), min(person.y0 + person.h, S)
    window = (slice(cy0 - person.y0, cy1 - person.y0), slice(cx0 - person.x0, cx1 - person.x0))
    m = whole[window]
    canvas[cy0:cy1, cx0:cx1][m] = fill[window][m]


def _odgt_box(box: list[int]) -> list[int]:
    """[x0, y0, x1, y1] -> CrowdHuman's [x, y, w, h]."""
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _person_record(k: int, person: _Person, vbox: list[int], occluded: bool) -> dict:
    hw, hh = max(1, round(0.4 * person.w)), max(1, round(0.15 * person.h))
    hbox = [person.x0 + (person.w - hw) // 2, person.y0, hw, hh]
    return {"tag": "person", "fbox": _odgt_box(person.box()), "vbox": _odgt_box(vbox), "hbox": hbox,
            "extra": {"box_id": k, "occ": int(occluded)}, "head_attr": {"ignore": 0, "occ": 0, "unsure": 0}}


def render_crowd(p: SyntheticParams, split: str, index: int) -> tuple[np.ndarray, list[dict]]:
    """Draw one crowd scene. Returns (uint8 [S, S, 3] RGB, the odgt ``gtboxes`` of the image: people in painting
    order, far to near, then the ignore regions)."""
    rng = np.random.default_rng(np.random.SeedSequence([p.seed, SPLIT_CODES[split], index]))
    S = p.image_size
    canvas = background(rng, S)
    regions = [_distant_crowd(p, rng, canvas) for _ in range(int(rng.integers(0, p.max_ignore_regions + 1)))]
    crowd = _Crowd(S, p.min_visible, p.min_inside)
    for _ in range(int(rng.integers(p.min_objects, p.max_objects + 1))):
        for _ in range(20):
            if crowd.people and rng.random() < p.cluster_prob:
                candidate = _neighbour(p, rng, crowd.people[int(rng.integers(len(crowd.people)))])
            else:
                candidate = _new_person(p, rng)
            if crowd.try_add(candidate):
                break
    order = sorted(range(len(crowd.people)), key=lambda k: crowd.people[k].feet)  # far to near
    for k in order:
        _paint_person(rng, canvas, crowd.people[k])
    canvas += rng.normal(0, p.noise, canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    gtboxes = []
    for k in order:
        rows, cols = np.nonzero(crowd.owner == k + 1)  # never empty: everyone keeps min_visible > 0 of a pixel
        vbox = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
        gtboxes.append(_person_record(len(gtboxes), crowd.people[k], vbox, crowd.visible[k] < crowd.area[k]))
    for box in regions:
        gtboxes.append({"tag": "mask", "fbox": _odgt_box(box), "vbox": _odgt_box(box), "hbox": _odgt_box(box),
                        "extra": {"box_id": len(gtboxes), "ignore": 1}})
    return image, gtboxes
