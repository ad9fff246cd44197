"""experiments/eval_noise.py: a resample's AP, from one COCOeval.evaluate(), equals pycocotools run from scratch on
a dataset in which the resampled images are physically repeated."""
import contextlib
import importlib.util
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import REPO

spec = importlib.util.spec_from_file_location("eval_noise", REPO / "experiments" / "eval_noise.py")
eval_noise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_noise)


def _dataset(seed: int, images: int = 12):
    """A small COCO dataset (2 classes, 0-4 objects per image) and noisy detections of it."""
    rng = np.random.default_rng(seed)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    detections = []
    for image_id in range(1, images + 1):
        gt["images"].append({"id": image_id, "width": 128, "height": 128})
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 80, 2)
            w, h = rng.uniform(8, 48, 2)
            category = int(rng.integers(1, 3))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": category,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(0, 3)):  # hits, loose hits and duplicates
                jitter = rng.normal(0, 4, 4)
                detections.append({"image_id": image_id, "category_id": category, "score": float(rng.uniform()),
                                   "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)]})
        for _ in range(rng.integers(0, 3)):  # false positives
            detections.append({"image_id": image_id, "category_id": int(rng.integers(1, 3)),
                               "score": float(rng.uniform()), "bbox": [*rng.uniform(0, 100, 2), 20.0, 20.0]})
    return gt, detections


def _coco(gt: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    return coco


def _ap_from_scratch(gt: dict, detections: list[dict], image_ids: list[int]) -> float:
    """Brute force: a new dataset holding each listed image (repeats too) as its own image."""
    copy = {"images": [], "annotations": [], "categories": gt["categories"]}
    copied = []
    for new_id, old_id in enumerate(image_ids, start=1):
        copy["images"].append({"id": new_id, "width": 128, "height": 128})
        for a in gt["annotations"]:
            if a["image_id"] == old_id:
                copy["annotations"].append({**a, "id": len(copy["annotations"]) + 1, "image_id": new_id})
        copied += [{**d, "image_id": new_id} for d in detections if d["image_id"] == old_id]
    coco = _coco(copy)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copied), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_resample_scores_as_the_repeated_images_scored_from_scratch(seed):
    gt, detections = _dataset(seed)
    coco = _coco(gt)
    ids = sorted(coco.getImgIds())
    ev = eval_noise.evaluated(coco, detections, ids)
    assert eval_noise.resampled_ap(ev, np.arange(len(ids))) == pytest.approx(_ap_from_scratch(gt, detections, ids))
    rng = np.random.default_rng(seed)
    for _ in range(3):
        positions = rng.integers(0, len(ids), size=len(ids))
        expected = _ap_from_scratch(gt, detections, [ids[p] for p in positions])
        assert eval_noise.resampled_ap(ev, positions) == pytest.approx(expected)
    # the evaluation is left as it was: the identity resample again gives the full AP
    assert eval_noise.resampled_ap(ev, np.arange(len(ids))) == pytest.approx(_ap_from_scratch(gt, detections, ids))


def test_bootstrap_reports_the_ap_and_a_spread_that_shrinks_with_more_images():
    gt, detections = _dataset(3, images=200)
    coco = _coco(gt)
    ids = sorted(coco.getImgIds())
    small = eval_noise.bootstrap(coco, detections, ids[:20], resamples=60, seed=0)
    large = eval_noise.bootstrap(coco, detections, ids, resamples=60, seed=0)
    assert small["AP"] == pytest.approx(_ap_from_scratch(gt, detections, ids[:20]))
    assert large["AP"] == pytest.approx(_ap_from_scratch(gt, detections, ids))
    assert large["bootstrap_sd"] < small["bootstrap_sd"]
    assert small["interval_95"][0] <= small["AP"] <= small["interval_95"][1]
