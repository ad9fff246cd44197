"""analysis.duplicate_sites: the location grid is the detector's, each duplicate's level difference, distance and score
ratio to the detection that took its object on a hand-made image, and 3DMF's paired change against scipy."""
import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from analysis.duplicate_sites import REACH, SiteCounts, duplicate_sites, location_grid, report
from test_detector import make_detector

STRIDES = (8, 16, 32, 64, 128)


def test_the_location_grid_is_the_detectors_own():
    model = make_detector("dual").eval()
    images = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        _, loc = model(images)
    points, level = location_grid((128, 256), model.strides)
    assert torch.equal(points, loc.points)
    assert torch.equal(torch.tensor(model.strides, dtype=loc.strides.dtype)[level], loc.strides)


def _index(level: int, row: int, col: int, size: int = 128) -> int:
    """The location index of (row, col) on level ``level`` of a size x size image (P3 first, row-major)."""
    before = sum((size // s) ** 2 for s in STRIDES[:level])
    return before + row * (size // STRIDES[level]) + col


def test_each_duplicate_is_placed_against_the_detection_that_took_its_object():
    points, level = location_grid((128, 128), STRIDES)
    target = {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([0])}
    found = [  # (location, score, label): all on the object's box, so all match it at IoU 1
        (_index(0, 2, 2), 0.9, 0),  # the taker: P3, point (20, 20)
        (_index(0, 2, 3), 0.8, 0),  # P3 one cell right: same level, 1 stride
        (_index(1, 1, 1), 0.7, 0),  # P4 (24, 24): one level apart, 4 px = 0.25 of its 16
        (_index(0, 2, 6), 0.6, 0),  # P3 (52, 20): 4 strides
        (_index(2, 0, 0), 0.5, 0),  # P5 (16, 16): two levels apart
        (_index(0, 0, 0), 0.4, 1),  # another class: a false positive, not a duplicate
    ]
    order = [3, 0, 5, 1, 4, 2]  # any order: the matching ranks by score
    detections = {"locations": torch.tensor([found[i][0] for i in order]),
                  "scores": torch.tensor([found[i][1] for i in order]),
                  "labels": torch.tensor([found[i][2] for i in order]),
                  "boxes": target["boxes"].repeat(len(order), 1)}
    diff, distance, ratio = duplicate_sites(detections, target, points, level, STRIDES)
    # the duplicates in the detections' own order: found[3], found[1], found[4], found[2]
    assert diff.tolist() == [0, 0, 2, 1]
    torch.testing.assert_close(distance, torch.tensor([4.0, 1.0, 4 / 32, 4 / 16]))
    torch.testing.assert_close(ratio, torch.tensor([0.6, 0.8, 0.5, 0.7]) / 0.9)
    within = (diff <= 1) & (distance <= REACH)
    assert within.tolist() == [False, True, False, True]


def test_an_image_without_duplicates_gives_none():
    points, level = location_grid((128, 128), STRIDES)
    target = {"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]]), "labels": torch.tensor([0])}
    detections = {"locations": torch.tensor([_index(0, 2, 2)]), "scores": torch.tensor([0.9]),
                  "labels": torch.tensor([0]), "boxes": target["boxes"]}
    diff, distance, ratio = duplicate_sites(detections, target, points, level, STRIDES)
    assert diff.numel() == distance.numel() == ratio.numel() == 0


def test_report_pairs_each_variant_with_its_3dmf_run_by_seed():
    def row(variant, seed, within, strong, ratio):
        return SiteCounts(checkpoint=f"{variant}/{seed}", variant=variant, seed=str(seed), detections=1000,
                          duplicates=100, level_diff=[70, 30, 0], distance=[90, 10, 0], within_reach=within,
                          score_ratio_median=ratio, strong=strong)
    rows = [row("dual", 0, 90, 30, 0.30), row("dual", 1, 88, 25, 0.33), row("dual", 2, 91, 28, 0.31),
            row("dual+3dmf", 2, 89, 27, 0.36), row("dual+3dmf", 0, 92, 31, 0.32), row("dual+3dmf", 1, 85, 29, 0.30),
            row("o2o", 0, 93, 30, 0.35)]  # no o2o+3dmf: no change reported for it
    text, data = report(rows, "cmd")
    [(variant, change)] = data["three_dmf_changes"].items()
    assert variant == "dual" and change["seeds"] == 3
    after, before = [0.92, 0.85, 0.89], [0.90, 0.88, 0.91]  # seeds 0, 1, 2
    assert change["reach_share"]["delta"] == pytest.approx(np.mean(np.subtract(after, before)))
    assert change["reach_share"]["p"] == pytest.approx(scipy_stats.ttest_rel(after, before).pvalue)
    assert change["score_ratio_median"]["p"] == pytest.approx(
        scipy_stats.ttest_rel([0.32, 0.30, 0.36], [0.30, 0.33, 0.31]).pvalue)
    assert "3DMF's change, paired by seed" in text and "| dual | 3 | " in text
    assert data["variants"]["dual"]["within_reach"]["mean"] == pytest.approx(np.mean(before))
