"""The DATE detector: backbone + FPN + head in training, and the inference of one branch.

In training ``forward`` returns the head outputs of the branches the head has, with their locations;
date/criterion.py turns them into losses. At inference ``predict`` runs one branch only
(``predict_branches``: several on one forward, for evaluating both branches of DATE):
- "o2o" (POTO, DATE): top-k scores, no NMS;
- "o2m" (the FCOS baseline): sqrt(cls * centerness) scores, then NMS.

Legend: B = images, L = FPN levels, N = locations over all levels, C = classes, K = kept candidates.
"""
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from date.box_ops import distances_to_boxes
from date.modeling.head import DATEHead


class Locations(NamedTuple):
    points: Tensor  # [N, 2] (x, y) centres at (i + 0.5) * stride
    strides: Tensor  # [N]
    level_sizes: list[int]  # H_l * W_l per level, P3 first


class DATEDetector(nn.Module):
    """FCOS-style fully convolutional detector with one-to-one and/or one-to-many predictors.

    Args:
        backbone: images [B, 3, H, W] -> dict of L feature maps [B, D, H/s, W/s] (P3-P7).
        head: a DATEHead; its ``branches`` are the ones trained.
        strides: stride of each level.
        inference_branch: "o2o" (no NMS) or "o2m" (NMS); must be one of the head's branches.
        score_thresh: minimum score of a detection.
        topk_candidates: one-to-one inference: candidates per level before the global top-k.
        detections_per_img: detections kept per image.
        nms_thresh: the FCOS baseline's NMS IoU.
    """

    nms_topk_candidates = 1000  # the FCOS baseline: candidates per level before NMS (torchvision's FCOS)

    def __init__(self, *, backbone: nn.Module, head: DATEHead, strides: tuple[int, ...], inference_branch: str,
                 score_thresh: float, topk_candidates: int, detections_per_img: int, nms_thresh: float):
        super().__init__()
        if inference_branch not in head.branches:
            raise ValueError(f"inference_branch={inference_branch!r} is not among the head's branches {head.branches}")
        self.backbone = backbone
        self.head = head
        self.strides = tuple(strides)
        self.inference_branch = inference_branch
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.detections_per_img = detections_per_img
        self.nms_thresh = nms_thresh
        self._locations_cache: tuple | None = None

    # ------------------------------------------------------------------ training
    def forward(self, images: Tensor) -> tuple[dict[str, dict[str, Tensor]], Locations]:
        """Training forward: (head outputs of every branch the head has, as in DATEHead.forward, and the
        locations they are predicted at) for a normalised, padded batch images [B, 3, H, W]."""
        features = list(self.backbone(images).values())
        return self.head(features, self.head.branches), self._locations(features)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: list[tuple[int, int]], *,
                nms: bool | None = None, branch: str | None = None) -> list[dict[str, Tensor]]:
        """Detections per image; only one branch's predictors run.

        Args:
            images (Tensor[B, 3, H, W]); image_sizes: (h, w) of each unpadded image.
            nms: None = the branch's own inference (NMS for o2m, none for o2o).
                False = the raw top ``detections_per_img`` by score, whatever the branch (analysis of
                duplicates: what the o2m branch gives before NMS). True = NMS at ``nms_thresh`` on the
                branch's candidates, whatever the branch.
            branch: None = the inference branch (o2o for POTO and DATE, o2m for FCOS); "o2m" on a dual
                model evaluates its auxiliary branch (a diagnostic: do the branches help or fight?).
        Returns:
            Per image "boxes" [K, 4] xyxy in input pixels (clipped), "scores" [K], "labels" [K] int64,
            K <= detections_per_img, sorted by score.
        """
        return self.predict_branches(images, image_sizes, (branch,), nms=nms)[0]

    @torch.no_grad()
    def predict_branches(self, images: Tensor, image_sizes: list[tuple[int, int]], branches: Sequence[str | None], *,
                         nms: bool | None = None) -> list[list[dict[str, Tensor]]]:
        """:meth:`predict` of each of ``branches`` (None: the inference branch) on one backbone and tower
        forward: evaluating both branches of DATE costs little more than one."""
        names = [branch or self.inference_branch for branch in branches]
        features = list(self.backbone(images).values())
        outputs = self.head(features, tuple(dict.fromkeys(names)))
        loc = self._locations(features)
        return [self._decode(outputs[name], loc, image_sizes, branch=name,
                             use_nms=name == "o2m" if nms is None else bool(nms)) for name in names]

    def _decode(self, out: dict[str, Tensor], loc: Locations, image_sizes: list[tuple[int, int]], *, branch: str,
                use_nms: bool) -> list[dict[str, Tensor]]:
        """One branch's head outputs -> per-image detections (see :meth:`predict`)."""
        if branch == "o2o":
            scores = o2o_logits(out).float().sigmoid()  # [B, N, C]
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
        points, strides, sizes = [], [], []
        for feature, stride in zip(features, self.strides):
            h, w = feature.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            points.append((torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * stride)
            strides.append(torch.full((h * w,), float(stride), device=device))
            sizes.append(h * w)
        loc = Locations(torch.cat(points), torch.cat(strides), sizes)
        self._locations_cache = (key, loc)
        return loc


def o2o_logits(out: dict[str, Tensor]) -> Tensor:
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
