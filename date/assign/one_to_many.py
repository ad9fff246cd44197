"""One-to-many assignment for the auxiliary branch: FCOS's rule, or a prediction-aware top-k.

Legend: B = images, N = locations over all FPN levels, M = ground truths (padded), C = classes.
Both return matched_gt (LongTensor[B, N]): the gt index each location is positive for, -1 = negative.
"""
import torch
from torch import Tensor

from date.box_ops import batched_pairwise_iou, in_center_region, point_to_box_distances


@torch.no_grad()
def fcos_assign(
    points: Tensor,
    strides: Tensor,
    level_ranges: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    *,
    center_sampling_radius: float | None,
) -> Tensor:
    """FCOS: positive when inside the gt box (or its centre region) and max(l, t, r, b) falls in the
    location's level range; a location inside several gts takes the smallest-area one.

    Args:
        points (Tensor[N, 2]), strides (Tensor[N]), level_ranges (Tensor[N, 2]): [low, high] of max(ltrb), both ends included as in FCOS.
        gt_boxes (Tensor[B, M, 4]), gt_valid (Tensor[B, M] bool): False marks padding.
        center_sampling_radius: in strides; None = whole box (DATE's setting).
    Returns:
        LongTensor[B, N]
    """
    B, M = gt_valid.shape
    if M == 0:
        return torch.full((B, points.shape[0]), -1, dtype=torch.long, device=points.device)
    ltrb = point_to_box_distances(points, gt_boxes)  # [B, N, M, 4]
    if center_sampling_radius is None:
        inside = ltrb.amin(dim=-1) > 0
    else:
        inside = in_center_region(points, strides, gt_boxes, center_sampling_radius)
    max_dist = ltrb.amax(dim=-1)  # [B, N, M]
    in_range = (max_dist >= level_ranges[None, :, None, 0]) & (max_dist <= level_ranges[None, :, None, 1])
    area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # [B, M]
    candidate_area = area[:, None, :].expand_as(max_dist).masked_fill(~(inside & in_range & gt_valid[:, None, :]), float("inf"))
    min_area, matched = candidate_area.min(dim=2)  # ties: the first (smallest index) gt
    return matched.masked_fill(min_area == float("inf"), -1)


@torch.no_grad()
def topk_assign(
    cls_logits: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt,
    *,
    k: int,
    alpha: float,
    beta: float,
) -> Tensor:
    """YOLOv10's consistent prediction-aware one-to-many rule: metric p(c_g)^alpha * IoU^beta for
    locations inside the gt box; each gt takes its top-k; a location claimed by several gts keeps the
    one it overlaps most.

    Args:
        cls_logits (Tensor[B, N, C]), pred_boxes (Tensor[B, N, 4]): the one-to-many branch's predictions.
        points (Tensor[N, 2]).
        gt: the padded ground truths, as date.criterion.GroundTruth holds them (not imported: date.criterion
            imports this module): ``boxes`` (Tensor[B, M, 4]), ``labels`` (Tensor[B, M]), ``valid`` (Tensor[B, M]
            bool, False marks padding).
    Returns:
        LongTensor[B, N]
    """
    gt_boxes, gt_labels, gt_valid = gt.boxes, gt.labels, gt.valid
    B, N, _ = cls_logits.shape
    M = gt_boxes.shape[1]
    if M == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=points.device)
    inside = (point_to_box_distances(points, gt_boxes).amin(dim=-1) > 0) & gt_valid[:, None, :]  # [B, N, M]
    prob = cls_logits.float().sigmoid().gather(2, gt_labels[:, None, :].expand(B, N, M))
    iou = batched_pairwise_iou(pred_boxes.float(), gt_boxes.float())  # [B, N, M]
    metric = prob.pow(alpha) * iou.pow(beta) * inside
    top = metric.topk(min(k, N), dim=1)  # [B, k, M]
    chosen = torch.zeros_like(inside)
    chosen.scatter_(1, top.indices, top.values > 0)  # keep only locations inside the box
    chosen &= inside
    overlap = iou.masked_fill(~chosen, -1.0)
    best_overlap, matched = overlap.max(dim=2)  # [B, N]
    return matched.masked_fill(best_overlap < 0, -1)


class FCOSAssigner:
    """FCOS's one-to-many rule with its per-level ranges of max(l, t, r, b).

    Args:
        strides: the stride of each FPN level (P3..P7).
        size_of_interest: the L-1 boundaries between the levels' ranges, in input pixels.
        center_sampling_radius: in strides; None = the whole box (DATE's setting).
    """

    def __init__(self, *, strides: tuple[int, ...], size_of_interest: tuple[float, ...],
                 center_sampling_radius: float | None):
        if len(size_of_interest) != len(strides) - 1:
            raise ValueError(f"size_of_interest needs {len(strides) - 1} boundaries for {len(strides)} levels, "
                             f"got {list(size_of_interest)}")
        bounds = [-1.0, *map(float, size_of_interest), float("inf")]
        self.level_ranges = list(zip(bounds[:-1], bounds[1:]))  # [low, high] of each level (both ends included)
        self.center_sampling_radius = center_sampling_radius
        self._ranges_cache: tuple | None = None  # ((level sizes, device), ranges): built once per image size

    def ranges(self, level_sizes: list[int], device: torch.device) -> Tensor:
        """Tensor[N, 2]: each location's [low, high], for levels of ``level_sizes`` locations (P3 first)."""
        key = (tuple(level_sizes), device)
        if self._ranges_cache is None or self._ranges_cache[0] != key:
            ranges = torch.cat([torch.tensor(bounds, device=device).expand(n, 2)
                                for bounds, n in zip(self.level_ranges, level_sizes)])
            self._ranges_cache = (key, ranges)
        return self._ranges_cache[1]

    @torch.no_grad()
    def __call__(self, cls_logits: Tensor, pred_boxes: Tensor, loc, gt) -> Tensor:
        """Prediction-free: only the locations (``points`` [N, 2], ``strides`` [N], ``level_sizes``) and the
        padded gts (``boxes`` [B, M, 4], ``valid`` [B, M]) count -> LongTensor[B, N]: the gt each location
        is positive for, or -1."""
        return fcos_assign(loc.points, loc.strides, self.ranges(loc.level_sizes, loc.points.device), gt.boxes,
                           gt.valid, center_sampling_radius=self.center_sampling_radius)


class TopKAssigner:
    """YOLOv10's consistent prediction-aware rule: each gt takes its top-k locations by p^alpha * IoU^beta."""

    def __init__(self, *, k: int, alpha: float, beta: float):
        self.k, self.alpha, self.beta = k, alpha, beta

    @torch.no_grad()
    def __call__(self, cls_logits: Tensor, pred_boxes: Tensor, loc, gt) -> Tensor:
        """The one-to-many branch's logits [B, N, C] and boxes [B, N, 4], the locations and the padded gts
        -> LongTensor[B, N] (see topk_assign)."""
        return topk_assign(cls_logits, pred_boxes, loc.points, gt, k=self.k, alpha=self.alpha, beta=self.beta)
