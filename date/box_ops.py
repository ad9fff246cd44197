"""Box helpers that torchvision.ops lacks: batched pairwise IoU and aligned (element-wise) IoU.

Boxes are (x1, y1, x2, y2) in pixels throughout.
"""
import torch
from torch import Tensor


def batched_pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair within each image.

    Args:
        boxes1 (Tensor[B, N, 4]), boxes2 (Tensor[B, M, 4])
    Returns:
        Tensor[B, N, M]
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])  # [B, N, M, 2]
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return inter / union.clamp(min=1e-6)


def aligned_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of boxes1[i] with boxes2[i].

    Args:
        boxes1, boxes2 (Tensor[P, 4])
    Returns:
        Tensor[P]
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    wh = (torch.minimum(boxes1[:, 2:], boxes2[:, 2:]) - torch.maximum(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area1 + area2 - inter).clamp(min=1e-6)


def distances_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """Decode (left, top, right, bottom) distances from points into boxes.

    Args:
        points (Tensor[N, 2]): (x, y) location centres; ltrb (Tensor[..., N, 4]) in pixels.
    Returns:
        Tensor[..., N, 4] xyxy
    """
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def point_to_box_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """(left, top, right, bottom) distances from every point to every box's sides.

    Args:
        points (Tensor[N, 2]); boxes (Tensor[B, M, 4])
    Returns:
        Tensor[B, N, M, 4]; all four positive iff the point lies inside the box.
    """
    x = points[None, :, None, 0]
    y = points[None, :, None, 1]
    return torch.stack(
        [x - boxes[:, None, :, 0], y - boxes[:, None, :, 1], boxes[:, None, :, 2] - x, boxes[:, None, :, 3] - y],
        dim=-1,
    )


def in_center_region(points: Tensor, strides: Tensor, boxes: Tensor, radius: float) -> Tensor:
    """Whether each point lies in each box's centre region: the box centre +- radius * (the point's
    stride), clipped to the box (FCOS centre sampling, POTO's centre prior).

    Args:
        points (Tensor[N, 2]); strides (Tensor[N]); boxes (Tensor[B, M, 4]).
    Returns:
        Tensor[B, N, M] bool
    """
    centers = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, M, 2]
    reach = radius * strides[None, :, None, None]  # [1, N, 1, 1]
    lo = torch.maximum(centers[:, None] - reach, boxes[:, None, :, :2])  # [B, N, M, 2]
    hi = torch.minimum(centers[:, None] + reach, boxes[:, None, :, 2:])
    p = points[None, :, None, :]
    return ((p > lo) & (p < hi)).all(dim=-1)
