"""The losses of both branches, as pure functions of predictions, targets and assignment.

Legend: B = images, N = locations over all FPN levels, M = ground truths (padded), C = classes,
P = positives in the batch.

| branch | classification | box | other |
| o2o | sigmoid focal (0.25, 2) | L1 on image-normalised cxcywh; GIoU | - |
| o2m | sigmoid focal (0.25, 2) | -log(IoU) weighted by centerness targets | centerness BCE |

Each function returns UNWEIGHTED terms; date/criterion.py weights them (model.loss_weights in
date/config.py, times the branch weights). Normalisers (positives, centerness sum) are passed in already
averaged over processes.
"""
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from date.box_ops import aligned_iou

def classification_loss(cls_logits: Tensor, pos_index: tuple[Tensor, Tensor], pos_labels: Tensor,
                        num_pos: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Sigmoid focal loss over all locations, summed and divided by the number of positives.

    Args:
        cls_logits (Tensor[B, N, C]); pos_index: (image index [P], location index [P]); pos_labels [P].
        num_pos (Tensor[]): positives averaged over processes, >= 1.
        ignore (Tensor[B, N] bool, optional): negatives inside crowd regions contribute nothing.
    """
    target = torch.zeros_like(cls_logits, dtype=torch.float32)
    target[pos_index[0], pos_index[1], pos_labels] = 1.0
    loss = sigmoid_focal_loss(cls_logits.float(), target, alpha=0.25, gamma=2.0, reduction="none")
    if ignore is not None:
        loss = loss * (~ignore)[..., None]
    return loss.sum() / num_pos


def o2o_box_losses(pred_boxes: Tensor, gt_boxes: Tensor, image_wh: Tensor, num_pos: Tensor) -> dict[str, Tensor]:
    """DETR-style box terms of the one-to-one branch.

    Args:
        pred_boxes, gt_boxes (Tensor[P, 4]) xyxy pixels; image_wh (Tensor[P, 2]) of each positive's image.
    Returns:
        {"l1": L1 on (cx, cy, w, h) / image size, "giou": 1 - GIoU}, each summed / num_pos.
    """
    scale = image_wh.repeat(1, 2)  # [P, 4]
    l1 = F.l1_loss(box_convert(pred_boxes, "xyxy", "cxcywh") / scale,
                   box_convert(gt_boxes, "xyxy", "cxcywh") / scale, reduction="sum")
    giou = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="sum") if len(pred_boxes) else pred_boxes.sum()
    return {"l1": l1 / num_pos, "giou": giou / num_pos}


def centerness_targets(ltrb: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of positive locations, ltrb [P, 4]."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt((lr.amin(-1) / lr.amax(-1)) * (tb.amin(-1) / tb.amax(-1)))


def o2m_box_losses(pred_boxes: Tensor, gt_boxes: Tensor, ctr_logits: Tensor, ctr_targets: Tensor,
                   num_pos: Tensor, ctr_sum: Tensor, *, box_loss: str) -> dict[str, Tensor]:
    """FCOS box terms of the one-to-many branch.

    Args:
        pred_boxes, gt_boxes (Tensor[P, 4]) xyxy; ctr_logits, ctr_targets (Tensor[P]).
        num_pos, ctr_sum (Tensor[]): positives and summed centerness targets, averaged over processes.
        box_loss: "log_iou" (the paper's FCOS) or "giou" (torchvision's FCOS).
    Returns:
        {"iou": sum(-log IoU * ctr) / ctr_sum  or  sum(1 - GIoU) / num_pos, "ctr": BCE sum / num_pos}
    """
    if box_loss == "giou":
        box = generalized_box_iou_loss(pred_boxes, gt_boxes, reduction="sum") / num_pos
    elif box_loss == "log_iou":
        iou = aligned_iou(pred_boxes, gt_boxes).clamp(min=1e-6)
        box = (-iou.log() * ctr_targets).sum() / ctr_sum
    else:
        raise ValueError(f"box_loss={box_loss!r}: expected 'log_iou' or 'giou'")
    return {
        "iou": box,
        "ctr": F.binary_cross_entropy_with_logits(ctr_logits.float(), ctr_targets, reduction="sum") / num_pos,
    }
