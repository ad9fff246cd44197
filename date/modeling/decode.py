"""Decoding: a branch's head outputs -> detections, written once for ``DATEDetector.predict`` and the ONNX export.

- "o2o" (POTO, DATE): scores sigmoid(cls) (times sigmoid(filter) with 3DMF), the top ``topk_candidates`` per level,
  then the global top ``detections_per_img``: no NMS;
- "o2m" (the FCOS baseline): scores sqrt(sigmoid(cls) * sigmoid(ctr)), the top ``nms_topk_candidates`` per level,
  then NMS at ``nms_thresh``.
Both keep scores above ``score_thresh`` and clip boxes to the unpadded image. The export does the per-image steps
batch-wide (date/export.py); :func:`candidates` and :func:`location_points` are shared.

Legend: B = images, N = locations over all levels, C = classes, K = candidates.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from date.box_ops import distances_to_boxes


@dataclass
class Decoding:
    """How detections are read from a branch's outputs (the ``model.*`` keys of the same names)."""

    score_thresh: float  # minimum score of a detection
    topk_candidates: int  # one-to-one inference: candidates per level before the global top-k
    detections_per_img: int  # detections kept per image
    nms_thresh: float  # the FCOS baseline's NMS IoU
    nms_topk_candidates: int = 1000  # candidates per level before NMS

    def per_level(self, branch: str) -> int:
        """Candidates taken from each level of ``branch``'s scores."""
        return self.topk_candidates if branch == "o2o" else self.nms_topk_candidates


class Candidates(NamedTuple):
    scores: Tensor  # [B, K]
    labels: Tensor  # [B, K] int64, contiguous
    boxes: Tensor  # [B, K, 4] xyxy in input pixels, not clipped
    locations: Tensor  # [B, K] int64: the location (index into N, P3 first) each was read from


def o2o_logits(out: dict[str, Tensor]) -> Tensor:
    """One-to-one classification logits; with 3DMF the score sigmoid(cls) * sigmoid(filter), as a logit."""
    if "filter" not in out:
        return out["cls"]
    prob = out["cls"].float().sigmoid() * out["filter"].float().sigmoid()[..., None]
    return torch.logit(prob, eps=1e-6)


def branch_scores(out: dict[str, Tensor], branch: str) -> Tensor:
    """Scores [B, N, C] in [0, 1] of a branch's head outputs (see the module docstring)."""
    if branch == "o2o":
        return o2o_logits(out).float().sigmoid()
    return torch.sqrt(out["cls"].float().sigmoid() * out["ctr"].float().sigmoid()[..., None])


def top_per_level(scores: Tensor, level_sizes: list[int], k: int) -> tuple[Tensor, Tensor, Tensor]:
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


def location_points(features: list[Tensor], strides: tuple[int, ...]) -> Tensor:
    """The (x, y) centres [N, 2] of every level's locations, at (i + 0.5) * stride, P3 first."""
    points = []
    for feature, stride in zip(features, strides):
        h, w = feature.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=feature.device), torch.arange(w, device=feature.device),
                                indexing="ij")
        points.append((torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * stride)
    return torch.cat(points)


def candidates(out: dict[str, Tensor], branch: str, points: Tensor, level_sizes: list[int],
               per_level: int) -> Candidates:
    """The top ``per_level`` (location, class) pairs of each level of ``branch``'s outputs, with their boxes.

    Args:
        out: the branch's head outputs ("cls" [B, N, C], "ltrb" [B, N, 4], "ctr" [B, N] or "filter" [B, N]).
        points (Tensor[N, 2]): the location centres (:func:`location_points`); level_sizes: H_l * W_l per level.
    """
    scores, loc, labels = top_per_level(branch_scores(out, branch), level_sizes, per_level)  # [B, K] each
    ltrb = out["ltrb"].float().gather(1, loc[..., None].expand(-1, -1, 4))  # [B, K, 4]
    return Candidates(scores, labels, distances_to_boxes(points[loc], ltrb), loc)


def top_candidates(cand: Candidates, k: int) -> Candidates:
    """The ``k`` best-scoring of each image's candidates, by decreasing score (the NMS-free answer)."""
    scores, keep = cand.scores.topk(min(k, cand.scores.shape[1]), dim=1)
    return Candidates(scores, cand.labels.gather(1, keep), cand.boxes.gather(1, keep[..., None].expand(-1, -1, 4)),
                      cand.locations.gather(1, keep))


def per_image_detections(cand: Candidates, image_sizes: list[tuple[int, int]], decoding: Decoding, *,
                         use_nms: bool) -> list[dict[str, Tensor]]:
    """Per image: the candidates above ``score_thresh``, boxes clipped to its (h, w), then NMS if ``use_nms``.

    Returns:
        Per image "boxes" [K, 4] xyxy, "scores" [K], "labels" [K] int64, "locations" [K] int64 (where each was
        read: analysis.duplicate_sites); with NMS sorted by score and K <= ``detections_per_img``.
    """
    results = []
    for i, size in enumerate(image_sizes):
        keep = cand.scores[i] > decoding.score_thresh
        found = {"boxes": clip_boxes_to_image(cand.boxes[i][keep], tuple(size)), "scores": cand.scores[i][keep],
                 "labels": cand.labels[i][keep], "locations": cand.locations[i][keep]}
        if use_nms:
            kept = batched_nms(found["boxes"], found["scores"], found["labels"],
                               decoding.nms_thresh)[: decoding.detections_per_img]
            found = {k: v[kept] for k, v in found.items()}
        results.append(found)
    return results
