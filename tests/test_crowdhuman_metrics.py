"""CrowdHuman's metrics (date/crowd_metrics.py): one hand-computed case per rule of issue #22, the JI matching
against a brute-force maximum-weight matching and scipy, and the greedy matching against a literal transcription
of the toolkit's loop on random scenes.

Boxes are xyxy; every image is 100 x 100 unless said otherwise; eps = 1e-6 as in the toolkit.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from date.crowd_metrics import (FPPI_REFERENCES, ImageDT, ImageGT, average_precision, clip_boxes, crowd_metrics,
                                ioa_matrix, iou_matrix, jaccard_index, log_average_miss_rate, match_image,
                                max_weight_matching)

EPS = 1e-6


def gt(persons=(), ignores=(), width=100, height=100) -> ImageGT:
    boxes = np.array(list(persons) + list(ignores), np.float64).reshape(-1, 4)
    return ImageGT(boxes=boxes, ignore=np.array([False] * len(persons) + [True] * len(ignores)), width=width,
                   height=height)


def dt(*pairs) -> ImageDT:
    """dt((box, score), ...) in file order."""
    return ImageDT(boxes=np.array([b for b, _ in pairs], np.float64).reshape(-1, 4),
                   scores=np.array([s for _, s in pairs], np.float64))


def no_dt() -> ImageDT:
    return dt()


def mmr(*miss_rates) -> float:
    """exp(mean(log)) of the 9 miss rates."""
    assert len(miss_rates) == 9
    return math.exp(sum(math.log(m) for m in miss_rates) / 9)


# ---- box ops


def test_iou_and_ioa_have_no_plus_one_and_the_toolkit_eps():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])  # area 100
    b = np.array([[5.0, 0.0, 25.0, 10.0]])  # area 200, intersection [5, 10] x [0, 10] = 50
    assert iou_matrix(a, b)[0, 0] == pytest.approx(50 / (100 + 200 - 50 + EPS), rel=1e-12)  # 0.2
    assert ioa_matrix(a, b)[0, 0] == pytest.approx(50 / (100 + EPS), rel=1e-12)  # over a's area: 0.5
    assert ioa_matrix(b, a)[0, 0] == pytest.approx(50 / (200 + EPS), rel=1e-12)  # over b's area: 0.25


def test_clipping_rule():
    # 100 wide, 50 high: x1 into [0, 99], y1 into [0, 49], x2 into [0, 100], y2 into [0, 50]
    boxes = np.array([[-5, -5, 150, 60], [150, 70, 200, 80], [-30, -30, -10, -10], [10, 10, 20, 20]])
    assert clip_boxes(boxes, 100, 50).tolist() == [[0, 0, 100, 50], [99, 49, 100, 50], [0, 0, 0, 0], [10, 10, 20, 20]]


# ---- AP, MR^-2, recall: one rule each


def test_strict_iou_above_half():
    # person [0, 0, 10, 10]. A = [0, 0, 10, 5]: inter 50, IoU 50 / (100 + 50 - 50 + eps) < 0.5 -> FP.
    # B = [0, 0, 10, 5.1]: IoU 51 / 100 = 0.51 -> TP. Ranked A (0.95), B (0.85): recall 0, 1; precision 0, 1/2
    # -> AP = (1 - 0) * (0 + 1/2) / 2 = 0.25. (IoU >= 0.5 would make A the TP, B an FP: AP 0.)
    g = gt([[0, 0, 10, 10]])
    d = dt(([0, 0, 10, 5], 0.95), ([0, 0, 10, 5.1], 0.85))
    scores, hits = match_image(g, d)
    assert hits.tolist() == [False, True]
    m = crowd_metrics([g], [d])
    assert m["AP"] == pytest.approx(0.25) and m["recall"] == 1.0
    # FPPI is 1 from the first point on, so every reference takes that point: miss rate 1
    assert m["mMR"] == pytest.approx(1.0)
    # JI, thresholds 0.0-0.8: both kept, one pair above 0.5 (B): 1 / (1 + 2 - 1 + eps); 0.9: A alone, 0
    assert m["JI"] == pytest.approx(1 / (2 + EPS), rel=1e-12)


def test_ignore_regions_absorb_by_ioa_over_the_detection():
    # persons P1 [0, 0, 10, 10], P2 [20, 0, 30, 10]; ignore region R [50, 50, 90, 90] (area 1600)
    # D1 [60, 60, 70, 70] 0.95: inside R (IoA 1) -> dropped
    # D3 [0, 0, 10, 10]   0.85: P1 -> TP
    # D2 [40, 40, 60, 60] 0.75: inter with R 10 x 10 = 100, IoA 100 / 400 = 0.25 -> FP
    # D4 [45, 50, 65, 70] 0.65: inter with R 15 x 20 = 300, IoA 300 / 400 = 0.75 -> dropped (its IoU with R,
    #                           300 / 1700 = 0.18, and the IoA over R's area, 300 / 1600 = 0.19, would say FP)
    # D5 [20, 0, 30, 10]  0.55: P2 -> TP
    g = gt([[0, 0, 10, 10], [20, 0, 30, 10]], [[50, 50, 90, 90]])
    d = dt(([60, 60, 70, 70], 0.95), ([40, 40, 60, 60], 0.75), ([0, 0, 10, 10], 0.85), ([45, 50, 65, 70], 0.65),
           ([20, 0, 30, 10], 0.55))
    scores, hits = match_image(g, d)
    assert scores.tolist() == [0.85, 0.75, 0.55] and hits.tolist() == [True, False, True]
    # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3 -> AP = 0 + (1/2) * (1/2 + 2/3) / 2 = 7/24
    m = crowd_metrics([g], [d])
    assert m["AP"] == pytest.approx(7 / 24) and m["recall"] == 1.0
    # FPPI 0, 1, 1; miss rate 1/2, 1/2, 0: every reference (0.01 .. 1.0) first reached at the 2nd point -> 1/2
    assert m["mMR"] == pytest.approx(0.5)
    # JI at 0.0-0.5: k = 2 (D3-P1, D5-P2); unmatched D1, D4 inside R are removed, D2 stays: n = 5 - 2 = 3, m = 2
    # -> 2 / (2 + 3 - 2) = 2/3. At 0.6 (D1, D3, D2, D4): k 1, n 2, m 2 -> 1/3; higher thresholds lower still.
    assert m["JI"] == pytest.approx(2 / (3 + EPS), rel=1e-12)


def test_boxes_are_clipped_to_the_image_first():
    # image 100 x 50. P1 [80, 10, 130, 40] -> [80, 10, 100, 40] (area 600); P2 [99.5, 0, 110, 10] -> x1 into
    # [0, 99]: [99, 0, 100, 10] (area 10). D1 [80, 10, 100, 40]: IoU 1 after clipping (0.4 before: 600 / 1500).
    # D2 [99, 0, 100, 10]: IoU 1 with the clipped P2 (with x1 = 99.5 kept: 5 / 10 = 0.5, not > 0.5).
    g = gt([[80, 10, 130, 40], [99.5, 0, 110, 10]], width=100, height=50)
    d = dt(([80, 10, 100, 40], 0.95), ([99, 0, 100, 10], 0.85))
    m = crowd_metrics([g], [d])
    # recall 1/2, 1; precision 1, 1 -> AP = (1/2) * (1 + 1) / 2 = 1/2; no FP: the last miss rate (0) everywhere
    assert m["AP"] == pytest.approx(0.5) and m["recall"] == 1.0 and m["mMR"] == 0.0
    assert m["JI"] == pytest.approx(2 / (2 + EPS), rel=1e-12)
    # a detection reaching past the border is clipped too: [-20, 10, 20, 40] -> [0, 10, 20, 40] = the person
    _, hits = match_image(gt([[0, 10, 20, 40]]), dt(([-20, 10, 20, 40], 0.9)))
    assert hits.tolist() == [True]  # unclipped IoU: 600 / 1200 = 0.5, not a match


def test_tied_scores_keep_the_ground_truth_image_order_then_the_file_order():
    # images A then B (the gt file's order), one person each; A's detection misses (FP), B's hits (TP), both 0.5.
    # Ranked A's FP, B's TP: recall 0, 1/2; precision 0, 1/2 -> AP = (1/2) * (1/2) / 2 = 1/8 (B first: AP 0).
    a, b = gt([[0, 0, 10, 10]]), gt([[0, 0, 10, 10]])
    assert crowd_metrics([a, b], [dt(([50, 50, 60, 60], 0.5)), dt(([0, 0, 10, 10], 0.5))])["AP"] == pytest.approx(1 / 8)
    assert crowd_metrics([b, a], [dt(([0, 0, 10, 10], 0.5)), dt(([50, 50, 60, 60], 0.5))])["AP"] == 0.0
    # within an image: equal scores keep the detection file's order (FP then TP: 1/4; TP then FP: 0)
    fp, tp = ([50, 50, 60, 60], 0.5), ([0, 0, 10, 10], 0.5)
    assert crowd_metrics([a], [dt(fp, tp)])["AP"] == pytest.approx(0.25)
    assert crowd_metrics([a], [dt(tp, fp)])["AP"] == 0.0


def test_equal_iou_takes_the_first_person_in_file_order():
    # P1 [0, 0, 10, 10], P2 [5, 0, 15, 10]; D1 [2.5, 0, 12.5, 10] (0.9): inter 75 with each, IoU 75 / 125 = 0.6
    # with both -> takes P1. D2 [0, 0, 10, 10] (0.8): P1 taken, IoU with P2 50 / 150 -> FP.
    # Ranked TP, FP: recall 1/2, 1/2 -> AP 0, recall 1/2. (Taking P2 would make D2 a TP: AP 1/2, recall 1.)
    m = crowd_metrics([gt([[0, 0, 10, 10], [5, 0, 15, 10]])], [dt(([2.5, 0, 12.5, 10], 0.9), ([0, 0, 10, 10], 0.8))])
    assert m["AP"] == 0.0 and m["recall"] == 0.5


def test_an_image_without_detections_counts():
    # A: person, FP [50, 50, 60, 60] 0.95, TP 0.85; B: a person, no detection. 2 persons, 2 images.
    # Ranked FP, TP: recall 0, 1/2; precision 0, 1/2 -> AP = (1/2) * (1/2) / 2 = 1/8; recall 1/2.
    # FPPI 1/2, 1/2; miss rate 1, 1/2: the 7 references <= 0.3162 take the 1st point (1); 0.5623 and 1.0 are never
    # reached: the last point (1/2) -> mMR = (1/2)^(2/9). (Had B not counted: FPPI 1, miss rate 1 everywhere.)
    # JI at 0.0-0.8: A k 1, m 1, n 2 -> 1/2; B k 0, m 1, n 0 -> 0; mean over both (m or n != 0) -> 1/4
    images = [gt([[0, 0, 10, 10]]), gt([[20, 20, 30, 30]])]
    m = crowd_metrics(images, [dt(([50, 50, 60, 60], 0.95), ([0, 0, 10, 10], 0.85)), no_dt()])
    assert m["AP"] == pytest.approx(1 / 8) and m["recall"] == 0.5
    assert m["mMR"] == pytest.approx(mmr(*[1.0] * 7, 0.5, 0.5))
    assert m["JI"] == pytest.approx(1 / (2 + EPS) / 2, rel=1e-12)


def test_an_image_with_only_ignore_regions_counts_as_an_image_with_no_person():
    # A: persons P1 [0, 0, 10, 10], P2 [30, 30, 40, 40]; FP [60, 60, 70, 70] 0.95, TP on P1 0.85.
    # B: ignore region [0, 0, 50, 50] only; detection [10, 10, 20, 20] 0.75 inside it -> dropped.
    # AP: ranked FP, TP; recall 0, 1/2; precision 0, 1/2 -> 1/8; recall 1/2 (2 persons, B adds none).
    # FPPI over 2 images: 1/2, 1/2 -> mMR (1/2)^(2/9) as above (1 if B were not an image).
    # JI at 0.0-0.8: A k 1, m 2, n 2 -> 1/3; B: its detection removed (inside the region), m = n = 0 -> left out
    # of the mean -> 1/3 (1/6 if B were counted).
    images = [gt([[0, 0, 10, 10], [30, 30, 40, 40]]), gt(ignores=[[0, 0, 50, 50]])]
    m = crowd_metrics(images, [dt(([60, 60, 70, 70], 0.95), ([0, 0, 10, 10], 0.85)), dt(([10, 10, 20, 20], 0.75))])
    assert m["AP"] == pytest.approx(1 / 8) and m["recall"] == 0.5
    assert m["mMR"] == pytest.approx(mmr(*[1.0] * 7, 0.5, 0.5))
    assert m["JI"] == pytest.approx(1 / (3 + EPS), rel=1e-12)


def test_ap_is_the_trapezoid_over_the_raw_points():
    # hits T F T F, 3 persons: recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2
    # -> AP = 0 + (1/3) * (1/2 + 2/3) / 2 + 0 = 7/36 (an added (0, 1) point would add 1/3; VOC's envelope more)
    ap, recall = average_precision(np.array([True, False, True, False]), 3)
    assert ap == pytest.approx(7 / 36) and recall == pytest.approx(2 / 3)
    assert average_precision(np.array([True]), 1) == (0.0, 1.0)  # one point: no area
    assert average_precision(np.zeros(0, bool), 5) == (0.0, 0.0)


def test_fppi_reference_taken_at_the_first_point_reaching_it_or_the_last():
    # hits T F T, 4 persons, 10 images: FPPI 0, 0.1, 0.1; miss rate 3/4, 3/4, 1/2.
    # 0.01 .. 0.1 (5 references; 0.1 >= 0.1 counts) -> the 2nd point: 3/4; 0.1778 .. 1.0 (4) never reached -> the
    # last point: 1/2.
    assert len(FPPI_REFERENCES) == 9
    value = log_average_miss_rate(np.array([True, False, True]), 4, 10)
    assert value == pytest.approx(mmr(*[0.75] * 5, *[0.5] * 4))
    assert log_average_miss_rate(np.zeros(0, bool), 4, 10) == 1.0  # no detection: miss rate 1


def test_ji_takes_the_best_score_threshold():
    # person [0, 0, 10, 10]; TP 0.35, FPs 0.25 and 0.15 elsewhere. Threshold 0.0, 0.1: k 1, n 3 -> 1/3;
    # 0.2: n 2 -> 1/2; 0.3 (= 0.30000000000000004): TP alone -> 1; 0.4 on: nothing left, m 1 -> 0. Best: 1.
    image = gt([[0, 0, 10, 10]])
    d = dt(([0, 0, 10, 10], 0.35), ([50, 50, 60, 60], 0.25), ([70, 70, 80, 80], 0.15))
    assert jaccard_index([image], [d]) == pytest.approx(1 / (1 + EPS), rel=1e-12)
    # a score of exactly 0.3 is not > 0.1 * 3 in floating point: at "0.3" nothing is left, the best is 1/2 at 0.2
    d = dt(([0, 0, 10, 10], 0.3), ([50, 50, 60, 60], 0.25), ([70, 70, 80, 80], 0.15))
    assert jaccard_index([image], [d]) == pytest.approx(1 / (2 + EPS), rel=1e-12)


def test_ji_removes_unmatched_ground_truths_inside_ignore_regions_by_their_own_area():
    # persons P1 [0, 0, 10, 10] (matched), P2 [40, 40, 50, 50] inside the ignore region [35, 35, 80, 80] (IoA over
    # P2's area = 1, over the region's 100 / 2025): unmatched -> removed, m = 1. One detection on P1 -> k 1, n 1:
    # JI 1 (P2 kept would give 1/2).
    image = gt([[0, 0, 10, 10], [40, 40, 50, 50]], [[35, 35, 80, 80]])
    assert jaccard_index([image], [dt(([0, 0, 10, 10], 0.9))]) == pytest.approx(1 / (1 + EPS), rel=1e-12)


def test_ji_matching_beats_greedy():
    # IoU [[0.9, 0.8], [0.85, 0.4]]: greedy takes (0, 0) and leaves row 1 without a pair > 0.5 (total 0.9, k 1);
    # the maximum weight is (0, 1) + (1, 0) = 1.65, k = 2. A 0.4 pair never counts.
    pairs = max_weight_matching(np.array([[0.9, 0.8], [0.85, 0.4]]))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 0)]
    assert max_weight_matching(np.array([[0.5, 0.2]])).shape == (0, 2)  # 0.5 is not > 0.5
    assert max_weight_matching(np.zeros((0, 3))).shape == (0, 2)


def _brute_force_weight(iou: np.ndarray) -> float:
    """The maximum total IoU over all matchings using pairs > 0.5, by enumeration."""
    rows, cols = iou.shape
    best = 0.0
    for k in range(min(rows, cols) + 1):
        for chosen_rows in itertools.combinations(range(rows), k):
            for chosen_cols in itertools.permutations(range(cols), k):
                values = [iou[r, c] for r, c in zip(chosen_rows, chosen_cols)]
                if all(v > 0.5 for v in values):
                    best = max(best, sum(values))
    return best


def test_ji_matching_weight_against_brute_force_and_scipy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(rng.integers(0, 6, size=2))
        iou = np.round(rng.uniform(0.3, 1.0, size=shape), 2)  # rounded: ties and exact 0.5s occur
        pairs = max_weight_matching(iou)
        assert len(set(pairs[:, 0])) == len(pairs) == len(set(pairs[:, 1]))
        assert all(iou[r, c] > 0.5 for r, c in pairs)
        weight = sum(iou[r, c] for r, c in pairs)
        assert weight == pytest.approx(_brute_force_weight(iou), abs=1e-9)
        if iou.size:  # scipy on the same matrix, pairs <= 0.5 at weight 0
            masked = np.where(iou > 0.5, iou, 0.0)
            r, c = linear_sum_assignment(masked, maximize=True)
            assert weight == pytest.approx(masked[r, c].sum(), abs=1e-9)


# ---- the greedy matching against a literal transcription of the toolkit's loop


def _toolkit_match(g: ImageGT, d: ImageDT) -> list[tuple[float, int]]:
    """The toolkit's compare_caltech, transcribed: gts in one list (persons first, then ignore regions, each in
    file order), loop with ``maxiou = 0.5``, break at the first ignore region once a person was found."""
    gboxes = clip_boxes(g.boxes, g.width, g.height)
    order_g = sorted(range(len(gboxes)), key=lambda j: bool(g.ignore[j]))  # stable: persons first
    order_d = sorted(range(len(d.scores)), key=lambda i: -d.scores[i])  # stable
    dboxes = clip_boxes(d.boxes, g.width, g.height)
    matched = [False] * len(gboxes)
    out = []
    for i in order_d:
        box = dboxes[i:i + 1]
        maxpos, maxiou = -1, 0.5
        for j in order_g:
            if matched[j]:
                continue
            if not g.ignore[j]:
                overlap = iou_matrix(box, gboxes[j:j + 1])[0, 0]
                if overlap > maxiou:
                    maxiou, maxpos = overlap, j
            elif maxpos >= 0:
                break
            elif ioa_matrix(box, gboxes[j:j + 1])[0, 0] > 0.5:
                maxiou, maxpos = ioa_matrix(box, gboxes[j:j + 1])[0, 0], j
        if maxpos >= 0 and not g.ignore[maxpos]:
            matched[maxpos] = True
            out.append((d.scores[i], 1))
        elif maxpos < 0:
            out.append((d.scores[i], 0))
    return out


def test_greedy_matching_agrees_with_the_toolkit_loop_on_random_crowds():
    rng = np.random.default_rng(1)
    for _ in range(150):
        n_gt, n_dt = rng.integers(0, 8), rng.integers(0, 10)
        xy = rng.integers(-10, 90, size=(n_gt, 2))
        boxes = np.concatenate([xy, xy + rng.integers(5, 40, size=(n_gt, 2))], axis=1)
        g = ImageGT(boxes=boxes.astype(float), ignore=rng.random(n_gt) < 0.3, width=100, height=80)
        centre = boxes[rng.integers(0, max(n_gt, 1), size=n_dt)] if n_gt else np.zeros((n_dt, 4))
        jitter = rng.integers(-4, 5, size=(n_dt, 4))
        d = ImageDT(boxes=(centre + jitter).astype(float), scores=rng.integers(1, 5, size=n_dt) / 4)  # many ties
        scores, hits = match_image(g, d)
        assert list(zip(scores.tolist(), hits.astype(int).tolist())) == _toolkit_match(g, d)


def test_inputs_checked():
    with pytest.raises(ValueError, match="2 ground-truth images but 1 detection"):
        crowd_metrics([gt([[0, 0, 1, 1]]), gt([[0, 0, 1, 1]])], [no_dt()])
    with pytest.raises(ValueError, match="holds no person"):
        crowd_metrics([gt(ignores=[[0, 0, 5, 5]])], [no_dt()])
