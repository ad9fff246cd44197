"""COCO evaluation: coordinates back to the original image, category ids, pycocotools numbers."""
import pytest
import torch
from pycocotools.coco import COCO

from date.coco_eval import STAT_NAMES, coco_stats, to_coco_results


def _coco(annotations):
    coco = COCO()
    coco.dataset = {"images": [{"id": 7, "width": 200, "height": 100}, {"id": 9, "width": 200, "height": 100}],
                    "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}], "annotations": annotations}
    coco.createIndex()
    return coco


GT = [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [20, 10, 60, 40], "area": 2400, "iscrowd": 0},
      {"id": 2, "image_id": 9, "category_id": 3, "bbox": [100, 50, 80, 40], "area": 3200, "iscrowd": 0}]


def test_boxes_go_back_to_original_pixels_and_category_ids():
    # the image was resized from 100 x 200 (H0, W0) to 50 x 100: boxes scale by 2
    prediction = {"boxes": torch.tensor([[10.0, 5.0, 40.0, 25.0]]), "scores": torch.tensor([0.9]),
                  "labels": torch.tensor([1])}
    target = {"image_id": 7, "orig_size": (100, 200), "image_size": (50, 100)}
    [record] = to_coco_results([prediction], [target], [3, 5])
    assert record == {"image_id": 7, "category_id": 5, "bbox": [20.0, 10.0, 60.0, 40.0], "score": 0.9}


def test_perfect_detections_score_one():
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in GT]
    stats, table = coco_stats(_coco(GT), results, [7, 9])
    assert list(stats) == list(STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert "Average Precision" in table


def test_no_detections_at_all_is_zero_not_a_crash():
    stats, _ = coco_stats(_coco(GT), [], [7, 9])
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
