"""The training objective of DATE and its baselines: assignment, targets, normalisers and weighting.

``DATECriterion`` owns the assigners of its branches (POTO for o2o; FCOS's rule or the top-k rule for
o2m), builds each branch's targets from the assignment, normalises by the positives (averaged over
processes), and weights every term: total = sum over terms of w_branch(t) * w_term * term. The loss
formulas themselves are the pure functions of date/losses.py.

Legend: B = images, N = locations over all FPN levels, M = ground truths (padded to the batch maximum),
C = classes, P = positives.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from date.assign import POTO, FCOSAssigner, TopKAssigner
from date.box_ops import distances_to_boxes, point_to_box_distances
from date.losses import centerness_targets, classification_loss, o2m_box_losses, o2o_box_losses
from date.modeling.decode import o2o_logits
from date.modeling.detector import Locations


class GroundTruth(NamedTuple):
    boxes: Tensor  # [B, M, 4] xyxy, zeros where padded
    labels: Tensor  # [B, M] int64, zeros where padded
    valid: Tensor  # [B, M] bool
    num: Tensor  # [B] real gts per image
    image_wh: Tensor  # [B, 2] (width, height) of the unpadded image


class Losses(NamedTuple):
    total: Tensor  # [] the weighted sum that is back-propagated
    terms: dict[str, Tensor]  # unweighted scalar terms "o2o/cls", "o2o/l1", ..., o2o first
    weights: dict[str, float]  # the weight of each term in ``total``: branch weight x term weight
    branch_weights: dict[str, float]  # {"o2m": w, "o2o": w} at this point of training
    # {"o2o": [L], "o2m": [L]} int64: the positive locations of the batch per FPN level, P3 first (a diagnostic:
    # where each branch is supervised; POTO's matches may land on levels the FCOS ranges give no positive)
    positives_per_level: dict[str, Tensor]


class DATECriterion:
    """The losses of the branches that have an assigner.

    Args:
        o2o: POTO, or None (the FCOS baseline trains no o2o branch).
        o2m: FCOSAssigner or TopKAssigner, or None (the POTO baseline).
        Every assigner is called as ``assigner(cls_logits [B, N, C], pred_boxes [B, N, 4], loc, gt)`` with
        its own branch's detached predictions (date/assign).
        o2m_box_loss: "log_iou" (the paper) or "giou" (torchvision), the "o2m/iou" term (model.o2m_box_loss).
        term_weights: {"o2o/cls": 2.0, ...} (model.loss_weights).
        branch_weighting: training progress in [0, 1] -> {"o2m": w, "o2o": w}.
    """

    def __init__(self, *, o2o: Optional[POTO], o2m: FCOSAssigner | TopKAssigner | None, o2m_box_loss: str,
                 term_weights: Mapping[str, float], branch_weighting: Callable[[float], Mapping[str, float]]):
        self.assigners = {name: a for name, a in (("o2o", o2o), ("o2m", o2m)) if a is not None}
        self.o2m_box_loss = o2m_box_loss
        self.term_weights = dict(term_weights)
        self.branch_weighting = branch_weighting

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(self.assigners)

    def __call__(self, outputs: dict[str, dict[str, Tensor]], loc: Locations, targets: list[dict],
                 progress: float) -> Losses:
        """Head outputs of the trained branches (DATEHead.forward), their locations, the batch's targets
        (per image "boxes" [M_b, 4] xyxy, "labels" [M_b], "image_size" (h, w), optional "crowd_boxes"
        [J_b, 4]) and the fraction of training done -> the weighted total and every term."""
        device = loc.points.device
        gt = pad_targets(targets, device)
        crowd = crowd_locations(loc.points, targets, device)  # [B, N] bool or None
        terms: dict[str, Tensor] = {}
        positives: dict[str, Tensor] = {}
        if "o2o" in self.assigners:
            terms.update(self.o2o_losses(outputs["o2o"], loc, gt, crowd, positives))
        if "o2m" in self.assigners:
            terms.update(self.o2m_losses(outputs["o2m"], loc, gt, crowd, positives))
        branch_weights = self.branch_weighting(progress)
        weights = {key: branch_weights[key.split("/")[0]] * self.term_weights[key] for key in terms}
        total = sum(weights[key] * value for key, value in terms.items())
        return Losses(total, terms, weights, dict(branch_weights), positives)

    def o2o_losses(self, out: dict[str, Tensor], loc: Locations, gt: GroundTruth, crowd: Tensor | None,
                   positives: dict[str, Tensor]) -> dict:
        logits = o2o_logits(out).float()  # [B, N, C]
        boxes = distances_to_boxes(loc.points, out["ltrb"].float())  # [B, N, 4]
        matched = self.assigners["o2o"](logits.detach(), boxes.detach(), loc, gt)  # [B, M]
        b, g = (matched >= 0).nonzero(as_tuple=True)  # [P], [P]
        pos_loc = matched[b, g]
        positives["o2o"] = positives_per_level(pos_loc, loc.level_sizes)
        num_pos = _average_across_processes(torch.tensor(float(len(b)), device=logits.device)).clamp(min=1.0)
        cls = classification_loss(logits, (b, pos_loc), gt.labels[b, g], num_pos, _negatives_in_crowd(crowd, b, pos_loc))
        if len(b) == 0:
            zero = _zero_keeping_graph(out["ltrb"])
            return {"o2o/cls": cls, "o2o/l1": zero, "o2o/giou": zero}
        box = o2o_box_losses(boxes[b, pos_loc], gt.boxes[b, g], gt.image_wh[b], num_pos)
        return {"o2o/cls": cls, "o2o/l1": box["l1"], "o2o/giou": box["giou"]}

    def o2m_losses(self, out: dict[str, Tensor], loc: Locations, gt: GroundTruth, crowd: Tensor | None,
                   positives: dict[str, Tensor]) -> dict:
        logits = out["cls"].float()  # [B, N, C]
        boxes = distances_to_boxes(loc.points, out["ltrb"].float())  # [B, N, 4]
        matched = self.assigners["o2m"](logits.detach(), boxes.detach(), loc, gt)  # [B, N]
        b, pos_loc = (matched >= 0).nonzero(as_tuple=True)  # [P], [P]
        g = matched[b, pos_loc]
        positives["o2m"] = positives_per_level(pos_loc, loc.level_sizes)
        gt_boxes = gt.boxes[b, g]  # [P, 4]
        points = loc.points[pos_loc]
        ctr_targets = centerness_targets(torch.cat([points - gt_boxes[:, :2], gt_boxes[:, 2:] - points], dim=1))
        num_pos = _average_across_processes(torch.tensor(float(len(b)), device=logits.device)).clamp(min=1.0)
        ctr_sum = _average_across_processes(ctr_targets.sum()).clamp(min=1e-6)
        cls = classification_loss(logits, (b, pos_loc), gt.labels[b, g], num_pos, _negatives_in_crowd(crowd, b, pos_loc))
        if len(b) == 0:
            zero = _zero_keeping_graph(out["ltrb"]) + _zero_keeping_graph(out["ctr"])
            return {"o2m/cls": cls, "o2m/iou": zero, "o2m/ctr": zero}
        box = o2m_box_losses(boxes[b, pos_loc], gt_boxes, out["ctr"][b, pos_loc], ctr_targets, num_pos, ctr_sum,
                             box_loss=self.o2m_box_loss)
        return {"o2m/cls": cls, "o2m/iou": box["iou"], "o2m/ctr": box["ctr"]}


def positives_per_level(pos_loc: Tensor, level_sizes: list[int]) -> Tensor:
    """[L] int64: how many of the positive locations ``pos_loc`` [P] (indices into the N locations, level-major)
    lie on each level."""
    ends = torch.tensor(level_sizes, device=pos_loc.device).cumsum(0)  # [L] first index past each level
    return torch.bincount(torch.bucketize(pos_loc, ends, right=True), minlength=len(level_sizes))


def pad_targets(targets: list[dict], device: torch.device) -> GroundTruth:
    boxes = pad_sequence([t["boxes"].to(device, torch.float32).reshape(-1, 4) for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"].to(device, torch.long).reshape(-1) for t in targets], batch_first=True)
    num = torch.tensor([len(t["labels"]) for t in targets], device=device)
    valid = torch.arange(boxes.shape[1], device=device)[None, :] < num[:, None]
    image_wh = torch.tensor([[t["image_size"][1], t["image_size"][0]] for t in targets], device=device, dtype=torch.float32)
    return GroundTruth(boxes, labels, valid, num, image_wh)


def crowd_locations(points: Tensor, targets: list[dict], device: torch.device) -> Tensor | None:
    """[B, N] bool: the location lies in an iscrowd region of its image (None if the batch has none)."""
    crowds = [t.get("crowd_boxes") for t in targets]
    if all(c is None or len(c) == 0 for c in crowds):
        return None
    empty = torch.zeros(0, 4)
    boxes = pad_sequence([(c if c is not None else empty).to(device, torch.float32).reshape(-1, 4) for c in crowds],
                         batch_first=True)  # [B, J, 4]; padding boxes are empty and contain no point
    return (point_to_box_distances(points, boxes).amin(dim=-1) > 0).any(dim=-1)


def _negatives_in_crowd(crowd: Tensor | None, b: Tensor, pos_loc: Tensor) -> Tensor | None:
    """Locations whose classification loss is ignored: in a crowd region and not a positive."""
    if crowd is None:
        return None
    ignore = crowd.clone()
    ignore[b, pos_loc] = False
    return ignore


def _average_across_processes(value: Tensor) -> Tensor:
    """Mean of a scalar over data-parallel processes (identity in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return value


def _zero_keeping_graph(tensor: Tensor) -> Tensor:
    """A zero loss that still reaches ``tensor``'s parameters, so DDP sees every parameter used."""
    return tensor.float().sum() * 0.0
