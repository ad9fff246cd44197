"""The DATE detector and its two baselines, one class selected by ``mode``:

- "o2m"  FCOS baseline: one-to-many branch only, NMS at inference;
- "o2o"  POTO baseline: one-to-one branch only, no NMS;
- "dual" DATE: both branches in training; only the one-to-one branch runs at inference, no NMS.

Legend: B = images, L = FPN levels, N = locations over all levels, M = ground truths (padded to the
batch maximum), C = classes, P = positives, K = kept candidates.
"""
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import batched_nms, clip_boxes_to_image

from date.assign import fcos_assign, match_one_to_one_batched, poto_quality, topk_assign
from date.box_ops import distances_to_boxes, point_to_box_distances
from date.losses import centerness_targets, classification_loss, o2m_box_losses, o2o_box_losses
from date.modeling.head import DATEHead

MODES = {"o2m": ("o2m",), "o2o": ("o2o",), "dual": ("o2o", "o2m")}
O2M_ASSIGNERS = ("fcos", "topk")


class GroundTruth(NamedTuple):
    boxes: Tensor  # [B, M, 4] xyxy, zeros where padded
    labels: Tensor  # [B, M] int64, zeros where padded
    valid: Tensor  # [B, M] bool
    num: Tensor  # [B] real gts per image
    image_wh: Tensor  # [B, 2] (width, height) of the unpadded image


class Locations(NamedTuple):
    points: Tensor  # [N, 2] (x, y) centres at (i + 0.5) * stride
    strides: Tensor  # [N]
    ranges: Tensor  # [N, 2] FCOS (low, high] of max(l, t, r, b) for the location's level
    level_sizes: list[int]  # H_l * W_l per level


class DATEDetector(nn.Module):
    """FCOS-style fully convolutional detector with one-to-one and/or one-to-many heads.

    Args:
        backbone: images [B, 3, H, W] -> dict of L feature maps [B, D, H/s, W/s] (P3-P7).
        head: a DATEHead whose predictors cover the mode's branches.
        mode: "o2m", "o2o" or "dual".
        num_classes: C.
        strides: stride of each level.
        size_of_interest: the L-1 FCOS boundaries of max(l, t, r, b) between levels, in input pixels.
        o2m_assigner: "fcos" or "topk" (YOLOv10's consistent prediction-aware top-k).
        poto_alpha, poto_center_radius: POTO quality exponent and centre-prior radius (in strides).
        fcos_center_sampling: FCOS centre-sampling radius in strides; None = whole box (DATE).
        topk, topk_alpha, topk_beta: the top-k assigner's k and metric exponents.
        score_thresh: minimum score of a detection.
        topk_candidates: one-to-one inference: candidates per level before the global top-k.
        detections_per_img: detections kept per image.
        nms_thresh, nms_topk_candidates: FCOS baseline's NMS IoU and candidates per level before NMS.
    """

    def __init__(self, *, backbone: nn.Module, head: DATEHead, mode: str, num_classes: int,
                 strides: tuple[int, ...] = (8, 16, 32, 64, 128),
                 size_of_interest: tuple[float, ...] = (64, 128, 256, 512),
                 o2m_assigner: str = "fcos", poto_alpha: float = 0.8, poto_center_radius: float = 1.5,
                 fcos_center_sampling: float | None = None, topk: int = 10, topk_alpha: float = 0.5,
                 topk_beta: float = 6.0, score_thresh: float = 0.01, topk_candidates: int = 100,
                 detections_per_img: int = 100, nms_thresh: float = 0.6, nms_topk_candidates: int = 1000):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {sorted(MODES)}")
        if o2m_assigner not in O2M_ASSIGNERS:
            raise ValueError(f"o2m_assigner={o2m_assigner!r}: expected one of {O2M_ASSIGNERS}")
        if len(size_of_interest) != len(strides) - 1:
            raise ValueError(f"size_of_interest needs {len(strides) - 1} boundaries for {len(strides)} levels, "
                             f"got {list(size_of_interest)}")
        if not set(MODES[mode]) <= set(head.branches):
            raise ValueError(f"mode {mode!r} needs head branches {MODES[mode]}, the head has {head.branches}")
        self.backbone = backbone
        self.head = head
        self.mode = mode
        self.train_branches = MODES[mode]
        self.inference_branch = "o2m" if mode == "o2m" else "o2o"
        self.num_classes = num_classes
        self.strides = tuple(strides)
        bounds = [-1.0, *map(float, size_of_interest), float("inf")]
        self.level_ranges = list(zip(bounds[:-1], bounds[1:]))
        self.o2m_assigner = o2m_assigner
        self.poto_alpha = poto_alpha
        self.poto_center_radius = poto_center_radius
        self.fcos_center_sampling = fcos_center_sampling
        self.topk, self.topk_alpha, self.topk_beta = topk, topk_alpha, topk_beta
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.detections_per_img = detections_per_img
        self.nms_thresh = nms_thresh
        self.nms_topk_candidates = nms_topk_candidates
        self._locations_cache: tuple | None = None

    # ------------------------------------------------------------------ training
    def forward(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        """Training forward.

        Args:
            images (Tensor[B, 3, H, W]): normalised, padded batch.
            targets: per image "boxes" [M_b, 4] xyxy, "labels" [M_b], "image_size" (h, w), optional
                "crowd_boxes" [J_b, 4] (ignored regions).
        Returns:
            Unweighted scalar loss terms of the mode's branches: "o2o/cls", "o2o/l1", "o2o/giou",
            "o2m/cls", "o2m/iou", "o2m/ctr".
        """
        features = list(self.backbone(images).values())
        outputs = self.head(features, self.train_branches)
        loc = self._locations(features)
        gt = _pad_targets(targets, images.device)
        crowd = _crowd_locations(loc.points, targets, images.device)  # [B, N] bool or None
        losses = {}
        if "o2o" in outputs:
            losses.update(self._o2o_losses(outputs["o2o"], loc, gt, crowd))
        if "o2m" in outputs:
            losses.update(self._o2m_losses(outputs["o2m"], loc, gt, crowd))
        return losses

    def _o2o_losses(self, out: dict[str, Tensor], loc: Locations, gt: GroundTruth, crowd: Tensor | None) -> dict:
        logits = _o2o_logits(out).float()  # [B, N, C]
        boxes = distances_to_boxes(loc.points, out["ltrb"].float())  # [B, N, 4]
        quality = poto_quality(logits.detach(), boxes.detach(), loc.points, loc.strides, gt.boxes, gt.labels,
                               alpha=self.poto_alpha, center_radius=self.poto_center_radius)  # [B, N, M]
        matched = match_one_to_one_batched(quality, gt.num)  # [B, M]
        b, g = (matched >= 0).nonzero(as_tuple=True)  # [P], [P]
        pos_loc = matched[b, g]
        num_pos = _average_across_processes(torch.tensor(float(len(b)), device=logits.device)).clamp(min=1.0)
        ignore = _negatives_in_crowd(crowd, b, pos_loc)
        cls = classification_loss(logits, (b, pos_loc), gt.labels[b, g], num_pos, ignore)
        if len(b) == 0:
            return {"o2o/cls": cls, "o2o/l1": _zero_keeping_graph(out["ltrb"]), "o2o/giou": _zero_keeping_graph(out["ltrb"])}
        box = o2o_box_losses(boxes[b, pos_loc], gt.boxes[b, g], gt.image_wh[b], num_pos)
        return {"o2o/cls": cls, "o2o/l1": box["l1"], "o2o/giou": box["giou"]}

    def _o2m_losses(self, out: dict[str, Tensor], loc: Locations, gt: GroundTruth, crowd: Tensor | None) -> dict:
        logits = out["cls"].float()  # [B, N, C]
        boxes = distances_to_boxes(loc.points, out["ltrb"].float())  # [B, N, 4]
        if self.o2m_assigner == "fcos":
            matched = fcos_assign(loc.points, loc.strides, loc.ranges, gt.boxes, gt.valid,
                                  center_sampling_radius=self.fcos_center_sampling)  # [B, N]
        else:
            matched = topk_assign(logits.detach(), boxes.detach(), loc.points, gt.boxes, gt.labels, gt.valid,
                                  k=self.topk, alpha=self.topk_alpha, beta=self.topk_beta)
        b, pos_loc = (matched >= 0).nonzero(as_tuple=True)  # [P], [P]
        g = matched[b, pos_loc]
        gt_boxes = gt.boxes[b, g]  # [P, 4]
        points = loc.points[pos_loc]
        ctr_targets = centerness_targets(torch.cat([points - gt_boxes[:, :2], gt_boxes[:, 2:] - points], dim=1))
        num_pos = _average_across_processes(torch.tensor(float(len(b)), device=logits.device)).clamp(min=1.0)
        ctr_sum = _average_across_processes(ctr_targets.sum()).clamp(min=1e-6)
        cls = classification_loss(logits, (b, pos_loc), gt.labels[b, g], num_pos, _negatives_in_crowd(crowd, b, pos_loc))
        if len(b) == 0:
            zero = _zero_keeping_graph(out["ltrb"]) + _zero_keeping_graph(out["ctr"])
            return {"o2m/cls": cls, "o2m/iou": zero, "o2m/ctr": zero}
        box = o2m_box_losses(boxes[b, pos_loc], gt_boxes, out["ctr"][b, pos_loc], ctr_targets, num_pos, ctr_sum)
        return {"o2m/cls": cls, "o2m/iou": box["iou"], "o2m/ctr": box["ctr"]}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]], *,
                nms: bool | None = None) -> list[dict[str, Tensor]]:
        """Detections per image; only the inference branch's predictors run.

        Args:
            images (Tensor[B, 3, H, W]); image_sizes: (h, w) of each unpadded image.
            nms: None = the mode's own inference (NMS for the o2m FCOS baseline, none for o2o/dual).
                False = the raw top ``detections_per_img`` by score, whatever the branch (analysis of
                duplicates: what the o2m branch gives before NMS). True = NMS at ``nms_thresh`` on the
                branch's candidates, whatever the branch.
        Returns:
            Per image "boxes" [K, 4] xyxy in input pixels (clipped), "scores" [K], "labels" [K] int64,
            K <= detections_per_img, sorted by score.
        """
        use_nms = self.inference_branch == "o2m" if nms is None else bool(nms)
        features = list(self.backbone(images).values())
        out = self.head(features, (self.inference_branch,))[self.inference_branch]
        loc = self._locations(features)
        if self.inference_branch == "o2o":
            scores = _o2o_logits(out).float().sigmoid()  # [B, N, C]
            per_level = self.topk_candidates
        else:
            scores = torch.sqrt(out["cls"].float().sigmoid() * out["ctr"].float().sigmoid()[..., None])
            per_level = self.nms_topk_candidates
        top_scores, top_loc, top_labels = _top_per_level(scores, loc.level_sizes, per_level)  # [B, K] each
        if not use_nms:  # NMS-free: the global top-k is the answer
            top_scores, keep = top_scores.topk(min(self.detections_per_img, top_scores.shape[1]), dim=1)
            top_loc, top_labels = top_loc.gather(1, keep), top_labels.gather(1, keep)
        ltrb = out["ltrb"].float().gather(1, top_loc[..., None].expand(-1, -1, 4))  # [B, K, 4]
        top_boxes = distances_to_boxes(loc.points[top_loc], ltrb)

        results = []
        for i, size in enumerate(image_sizes):
            keep = top_scores[i] > self.score_thresh
            boxes, scores_i, labels = clip_boxes_to_image(top_boxes[i][keep], tuple(size)), top_scores[i][keep], top_labels[i][keep]
            if use_nms:
                kept = batched_nms(boxes, scores_i, labels, self.nms_thresh)[: self.detections_per_img]
                boxes, scores_i, labels = boxes[kept], scores_i[kept], labels[kept]
            results.append({"boxes": boxes, "scores": scores_i, "labels": labels})
        return results

    # ------------------------------------------------------------------ helpers
    def _locations(self, features: list[Tensor]) -> Locations:
        """Location centres of every level, cached per feature-map shapes and device."""
        key = (tuple(f.shape[-2:] for f in features), features[0].device)
        if self._locations_cache is not None and self._locations_cache[0] == key:
            return self._locations_cache[1]
        device = features[0].device
        points, strides, ranges, sizes = [], [], [], []
        for feature, stride, (low, high) in zip(features, self.strides, self.level_ranges):
            h, w = feature.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            points.append((torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * stride)
            strides.append(torch.full((h * w,), float(stride), device=device))
            ranges.append(torch.tensor([low, high], device=device).expand(h * w, 2))
            sizes.append(h * w)
        loc = Locations(torch.cat(points), torch.cat(strides), torch.cat(ranges), sizes)
        self._locations_cache = (key, loc)
        return loc


def _o2o_logits(out: dict[str, Tensor]) -> Tensor:
    """One-to-one classification logits; with 3DMF the score sigmoid(cls) * sigmoid(filter), as a logit."""
    if "filter" not in out:
        return out["cls"]
    prob = out["cls"].float().sigmoid() * out["filter"].float().sigmoid()[..., None]
    return torch.logit(prob, eps=1e-6)


def _top_per_level(scores: Tensor, level_sizes: list[int], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k (location, class) pairs of each level, concatenated.

    Args:
        scores (Tensor[B, N, C]).
    Returns:
        scores [B, K], location index [B, K], label [B, K] with K = sum over levels of min(k, H_l*W_l*C).
    """
    num_classes = scores.shape[2]
    values, indices, offset = [], [], 0
    for level in scores.split(level_sizes, dim=1):
        flat = level.flatten(1)  # [B, H_l*W_l*C]
        top = flat.topk(min(k, flat.shape[1]), dim=1)
        values.append(top.values)
        indices.append(top.indices + offset * num_classes)
        offset += level.shape[1]
    index = torch.cat(indices, dim=1)
    return torch.cat(values, dim=1), index // num_classes, index % num_classes


def _pad_targets(targets: list[dict], device: torch.device) -> GroundTruth:
    boxes = pad_sequence([t["boxes"].to(device, torch.float32).reshape(-1, 4) for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"].to(device, torch.long).reshape(-1) for t in targets], batch_first=True)
    num = torch.tensor([len(t["labels"]) for t in targets], device=device)
    valid = torch.arange(boxes.shape[1], device=device)[None, :] < num[:, None]
    image_wh = torch.tensor([[t["image_size"][1], t["image_size"][0]] for t in targets], device=device, dtype=torch.float32)
    return GroundTruth(boxes, labels, valid, num, image_wh)


def _crowd_locations(points: Tensor, targets: list[dict], device: torch.device) -> Tensor | None:
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
