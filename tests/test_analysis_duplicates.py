"""The duplicate count of analysis.duplicates on a hand-made image and against a brute-force count."""
import random

import torch

from analysis.duplicates import MatchCounts, count_duplicates, variant_of


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_hand_made_image():
    # A and B (class 0) side by side, overlapping; C (class 1) far away.
    gt_boxes = _t([[0, 0, 40, 40], [30, 0, 70, 40], [100, 100, 140, 140]])
    gt_labels = torch.tensor([0, 0, 1])
    dets = [  # (box, score, label, what it is)
        ([0, 0, 40, 40], 0.95, 0, "TP on A"),
        ([2, 0, 42, 40], 0.90, 0, "A again (IoU 0.90); B is free but overlaps it only 0.18: a duplicate"),
        ([1, 1, 41, 41], 0.85, 1, "on A with the wrong class: a false positive, not a duplicate"),
        ([30, 0, 70, 40], 0.80, 0, "TP on B"),
        ([29, 0, 69, 40], 0.70, 0, "B again: duplicate"),
        ([100, 100, 115, 115], 0.60, 1, "on C with IoU 0.14: false positive"),
        ([100, 100, 140, 140], 0.50, 1, "TP on C"),
        ([101, 100, 141, 140], 0.40, 1, "C again: duplicate"),
    ]
    shuffled = random.Random(0).sample(dets, len(dets))  # the count sorts by score itself
    counts = count_duplicates(_t([d[0] for d in shuffled]), torch.tensor([d[1] for d in shuffled]),
                              torch.tensor([d[2] for d in shuffled]), gt_boxes, gt_labels)
    assert counts == MatchCounts(detections=8, true_positives=3, duplicates=3)
    assert counts.rate == 3 / 8


def test_a_detection_that_can_still_take_a_free_object_is_not_a_duplicate():
    gt_boxes, gt_labels = _t([[0, 0, 40, 40], [10, 0, 50, 40]]), torch.tensor([0, 0])  # IoU(A, B) = 0.6
    boxes = _t([[0, 0, 40, 40], [5, 0, 45, 40]])  # the second overlaps A (taken) and B (free) >= 0.5
    counts = count_duplicates(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), gt_boxes, gt_labels)
    assert counts == MatchCounts(2, 2, 0)


def test_no_detections_or_no_objects():
    empty = torch.zeros(0, 4)
    assert count_duplicates(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), _t([[0, 0, 9, 9]]),
                            torch.tensor([0])) == MatchCounts(0, 0, 0)
    assert count_duplicates(_t([[0, 0, 9, 9]]), torch.tensor([0.5]), torch.tensor([0]), empty,
                            torch.zeros(0, dtype=torch.long)) == MatchCounts(1, 0, 0)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _brute_force(dets, gts):
    """Plain Python: detections by descending score; each takes the best free same-class object at IoU >= 0.5,
    else counts as a duplicate when it hits a taken one."""
    taken, tp, dup = set(), 0, 0
    for box, _, label in sorted(dets, key=lambda d: -d[1]):
        hits = [(_iou(box, g), j) for j, (g, gl) in enumerate(gts) if gl == label and _iou(box, g) >= 0.5]
        free = [h for h in hits if h[1] not in taken]
        if free:
            taken.add(max(free)[1])
            tp += 1
        elif hits:
            dup += 1
    return tp, dup


def test_matches_a_brute_force_count_on_random_crowded_images():
    rng = random.Random(1)
    for _ in range(30):
        gts = []
        for _ in range(rng.randint(1, 6)):
            x, y, w, h = rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(10, 40), rng.uniform(10, 40)
            gts.append(([x, y, x + w, y + h], rng.randint(0, 1)))
        dets = []
        for _ in range(rng.randint(0, 25)):  # jittered copies of objects: many near-duplicates
            (g, label) = rng.choice(gts)
            j = [rng.gauss(0, 3) for _ in range(4)]
            box = [g[0] + j[0], g[1] + j[1], max(g[2] + j[2], g[0] + j[0] + 1), max(g[3] + j[3], g[1] + j[1] + 1)]
            dets.append((box, rng.random(), label if rng.random() < 0.85 else 1 - label))
        counts = count_duplicates(_t([d[0] for d in dets]).reshape(-1, 4), torch.tensor([d[1] for d in dets]),
                                  torch.tensor([d[2] for d in dets], dtype=torch.long), _t([g for g, _ in gts]),
                                  torch.tensor([l for _, l in gts]))
        assert (counts.true_positives, counts.duplicates) == _brute_force(dets, gts)
        assert counts.detections == len(dets)


def test_variant_of_a_checkpoint_config():
    assert variant_of({"assigner": {"mode": "dual", "o2m": "topk"}}) == "dual_topk"
    assert variant_of({"assigner": {"mode": "dual", "o2m": "fcos"}}) == "dual"
    assert variant_of({"assigner": {"mode": "o2m", "o2m": "fcos"}}) == "o2m"
