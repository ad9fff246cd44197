"""Assignment against independent references: scipy on the full matrix, and brute-force loops."""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from date.assign import fcos_assign, match_one_to_one, match_one_to_one_batched, poto_quality, topk_assign
from date.criterion import GroundTruth


def scipy_optimum(quality: torch.Tensor) -> float:
    q = quality.double().numpy()
    rows, cols = linear_sum_assignment(q, maximize=True)
    return float(q[rows, cols].sum())


def check_matching(quality: torch.Tensor, matched: torch.Tensor):
    n, m = quality.shape
    assert matched.dtype == torch.long and matched.shape == (m,)
    assigned = matched[matched >= 0]
    assert len(assigned.unique()) == len(assigned), "a location matched twice"
    assert int((matched < 0).sum()) == max(0, m - n), "-1 only where gts outnumber locations"
    assert ((assigned >= 0) & (assigned < n)).all()
    total = float(quality.double()[assigned, (matched >= 0).nonzero()[:, 0]].sum()) if len(assigned) else 0.0
    assert total == pytest.approx(scipy_optimum(quality), rel=1e-9, abs=1e-9)


def quality_cases():
    """Random and adversarial (num_locations, num_gts) quality matrices."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for n, m in itertools.product([1, 2, 3, 5, 8, 20, 60], [0, 1, 2, 3, 7, 12, 25]):
        cases.append(torch.rand(n, m, generator=g))  # continuous
        cases.append(torch.randint(0, 3, (n, m), generator=g).float())  # heavy ties
        sparse = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < 0.15)  # zeros outside the prior
        cases.append(sparse)
        cases.append(torch.zeros(n, m))  # nothing in any prior
        cases.append(torch.ones(n, m))  # everything tied
    # Every gt prefers the same few locations: forces the exchange argument of the pruning.
    for n, m in [(30, 10), (10, 10), (11, 10), (9, 10), (100, 20)]:
        base = torch.rand(n, 1, generator=g).expand(n, m).clone()
        base[:3] += 10.0
        cases.append(base)
    return cases


@pytest.mark.parametrize("case", range(len(quality_cases())))
def test_match_one_to_one_equals_scipy_full_matrix(case):
    quality = quality_cases()[case]
    check_matching(quality, match_one_to_one(quality))


def test_match_one_to_one_batched_handles_padding():
    g = torch.Generator().manual_seed(1)
    num_gts = torch.tensor([0, 1, 5, 9])
    quality = torch.rand(4, 40, 9, generator=g)
    matched = match_one_to_one_batched(quality, num_gts)
    for b, m in enumerate(num_gts.tolist()):
        check_matching(quality[b, :, :m], matched[b, :m])
        assert (matched[b, m:] == -1).all(), "padding columns stay unmatched"


def test_match_one_to_one_rejects_wrong_shape():
    with pytest.raises(ValueError, match="num_locations, num_gts"):
        match_one_to_one(torch.rand(3, 4, 5))


def brute_poto_quality(logits, boxes, points, strides, gt_boxes, gt_labels, alpha, radius):
    B, N, _ = logits.shape
    M = gt_boxes.shape[1]
    out = torch.zeros(B, N, M)
    for b, n, m in itertools.product(range(B), range(N), range(M)):
        x1, y1, x2, y2 = gt_boxes[b, m].tolist()
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        px, py = points[n].tolist()
        r = radius * float(strides[n])
        inside = max(cx - r, x1) < px < min(cx + r, x2) and max(cy - r, y1) < py < min(cy + r, y2)
        p = torch.sigmoid(logits[b, n, gt_labels[b, m]])
        a = boxes[b, n]
        ix = max(0.0, min(a[2], gt_boxes[b, m, 2]) - max(a[0], gt_boxes[b, m, 0]))
        iy = max(0.0, min(a[3], gt_boxes[b, m, 3]) - max(a[1], gt_boxes[b, m, 1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (x2 - x1) * (y2 - y1) - inter
        out[b, n, m] = p ** (1 - alpha) * (inter / union) ** alpha if inside else -1.0
    return out


def small_scene(seed=0, B=2, M=3, C=4):
    g = torch.Generator().manual_seed(seed)
    points = torch.tensor([[x + 0.5, y + 0.5] for y in range(0, 64, 8) for x in range(0, 64, 8)]) * 1.0
    points = torch.cat([points, torch.tensor([[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]]) * 2])
    strides = torch.cat([torch.full((64,), 8.0), torch.full((4,), 16.0)])
    xy = torch.rand(B, M, 2, generator=g) * 40
    gt_boxes = torch.cat([xy, xy + 6 + torch.rand(B, M, 2, generator=g) * 30], dim=-1)
    gt_labels = torch.randint(0, C, (B, M), generator=g)
    logits = torch.randn(B, len(points), C, generator=g)
    centers = points[None].expand(B, -1, -1)
    boxes = torch.cat([centers - 2 - torch.rand(B, len(points), 2, generator=g) * 20,
                       centers + 2 + torch.rand(B, len(points), 2, generator=g) * 20], dim=-1)
    return points, strides, gt_boxes, gt_labels, logits, boxes


def test_poto_quality_matches_brute_force():
    points, strides, gt_boxes, gt_labels, logits, boxes = small_scene()
    ours = poto_quality(logits, boxes, points, strides, gt_boxes, gt_labels, alpha=0.8, center_radius=1.5)
    ref = brute_poto_quality(logits, boxes, points, strides, gt_boxes, gt_labels, 0.8, 1.5)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert (ours > 0).any() and (ours == -1).any()


def brute_fcos(points, strides, ranges, gt_boxes, gt_valid, radius):
    B, M = gt_valid.shape
    out = torch.full((B, len(points)), -1, dtype=torch.long)
    for b, n in itertools.product(range(B), range(len(points))):
        px, py = points[n].tolist()
        best, best_area = -1, float("inf")
        for m in range(M):
            if not gt_valid[b, m]:
                continue
            x1, y1, x2, y2 = gt_boxes[b, m].tolist()
            l, t, r, bt = px - x1, py - y1, x2 - px, y2 - py
            if radius is None:
                inside = min(l, t, r, bt) > 0
            else:
                cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, radius * float(strides[n])
                inside = max(cx - s, x1) < px < min(cx + s, x2) and max(cy - s, y1) < py < min(cy + s, y2)
            lo, hi = ranges[n].tolist()
            area = (x2 - x1) * (y2 - y1)
            if inside and lo <= max(l, t, r, bt) <= hi and area < best_area:
                best, best_area = m, area
        out[b, n] = best
    return out


@pytest.mark.parametrize("radius", [None, 1.5])
@pytest.mark.parametrize("seed", range(5))
def test_fcos_assign_matches_brute_force(seed, radius):
    points, strides, gt_boxes, _, _, _ = small_scene(seed, B=3, M=6)
    ranges = torch.where(strides[:, None] == 8, torch.tensor([-1.0, 16.0]), torch.tensor([16.0, float("inf")]))
    gt_valid = torch.ones(3, 6, dtype=torch.bool)
    gt_valid[1, 4:] = False  # padding
    gt_boxes[2, 1] = gt_boxes[2, 0]  # identical boxes: tie goes to the first
    ours = fcos_assign(points, strides, ranges, gt_boxes, gt_valid, center_sampling_radius=radius)
    ref = brute_fcos(points, strides, ranges, gt_boxes, gt_valid, radius)
    assert torch.equal(ours, ref)
    assert (ours >= 0).any()


def test_topk_assign_takes_at_most_k_inside_locations_per_gt():
    points, _, gt_boxes, gt_labels, logits, boxes = small_scene(3, B=2, M=4)
    valid = torch.ones(2, 4, dtype=torch.bool)
    gt = GroundTruth(gt_boxes, gt_labels, valid, num=valid.sum(1), image_wh=torch.tensor([[64, 64]] * 2))
    matched = topk_assign(logits, boxes, points, gt, k=3, alpha=0.5, beta=6.0)
    for b in range(2):
        for m in range(4):
            locs = (matched[b] == m).nonzero()[:, 0]
            assert len(locs) <= 3
            x1, y1, x2, y2 = gt_boxes[b, m]
            p = points[locs]
            assert ((p[:, 0] > x1) & (p[:, 0] < x2) & (p[:, 1] > y1) & (p[:, 1] < y2)).all()


def test_no_ground_truth_gives_no_positives():
    points, strides, _, _, logits, boxes = small_scene()
    empty = torch.zeros(2, 0, 4)
    ranges = torch.tensor([[-1.0, float("inf")]]).expand(len(points), 2)
    assert (fcos_assign(points, strides, ranges, empty, torch.zeros(2, 0, dtype=torch.bool),
                        center_sampling_radius=None) == -1).all()
    assert match_one_to_one_batched(torch.zeros(2, len(points), 0), torch.tensor([0, 0])).shape == (2, 0)
    assert np.array_equal(match_one_to_one(torch.zeros(5, 0)).numpy(), np.zeros(0))


@pytest.mark.parametrize("whole_pixels", [False, True])
@pytest.mark.parametrize("size_of_interest", [(64.0, 128.0, 256.0, 512.0), (16.0, 32.0, 64.0, 128.0)])
def test_the_statistics_count_the_positives_the_fcos_assigner_makes(size_of_interest, whole_pixels):
    """`python -m date.data.synthetic --stats` (one image at a time, on its own locations) and the training assigner
    (a padded batch, on the detector's locations) agree per object; whole-pixel boxes, as the synthetic benchmark's,
    can put locations exactly on a level's bound (max(l, t, r, b) = 64)."""
    from date.assign import FCOSAssigner
    from date.criterion import pad_targets
    from date.data.synthetic.statistics import feature_locations, o2m_positives
    from date.modeling.detector import Locations

    strides, size = (8, 16, 32, 64, 128), 128
    points, per_point_strides, level_sizes = [], [], []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(size // s), torch.arange(size // s), indexing="ij")
        points.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * s)
        per_point_strides.append(torch.full((len(points[-1]),), float(s)))
        level_sizes.append(len(points[-1]))
    loc = Locations(torch.cat(points), torch.cat(per_point_strides), level_sizes)
    stats_loc = feature_locations((size, size), strides)
    assert torch.equal(stats_loc.points, loc.points) and stats_loc.level_sizes == loc.level_sizes
    g = torch.Generator().manual_seed(3)
    targets = []
    for _ in range(4):
        xy = torch.rand(6, 2, generator=g) * 100
        wh = torch.rand(6, 2, generator=g) * 90 + 6
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        targets.append({"boxes": boxes.round() if whole_pixels else boxes, "labels": torch.zeros(6, dtype=torch.long),
                        "image_size": (size, size)})
    assigner = FCOSAssigner(strides=strides, size_of_interest=size_of_interest, center_sampling_radius=None)
    matched = assigner(None, None, loc, pad_targets(targets, torch.device("cpu")))  # [B, N]
    for b, t in enumerate(targets):
        ours = torch.bincount(matched[b][matched[b] >= 0], minlength=6).tolist()
        _, per_box = o2m_positives(t["boxes"].double().numpy(), (size, size), stats_loc, assigner)
        assert ours == per_box
