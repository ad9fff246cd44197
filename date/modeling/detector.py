"""The DATE detector: backbone + FPN + head in training, and the inference of one branch.

In training ``forward`` returns the head outputs of the branches the head has, with their locations;
date/criterion.py turns them into losses. At inference ``predict`` runs one branch only
(``predict_branches``: several on one forward, for evaluating both branches of DATE) and decodes it
(date/modeling/decode.py):
- "o2o" (POTO, DATE): top-k scores, no NMS;
- "o2m" (the FCOS baseline): sqrt(cls * centerness) scores, then NMS.
The pipeline around it (resize, normalise, pad; back to the image's pixels) is date/inference.py.

Legend: B = images, L = FPN levels, N = locations over all levels, C = classes, K = kept candidates.
"""
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from date.modeling.decode import Decoding, candidates, location_points, per_image_detections, top_candidates
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
        decoding: thresholds and candidate counts of the decoding (date/modeling/decode.py).
    """

    def __init__(self, *, backbone: nn.Module, head: DATEHead, strides: tuple[int, ...], inference_branch: str,
                 decoding: Decoding):
        super().__init__()
        if inference_branch not in head.branches:
            raise ValueError(f"inference_branch={inference_branch!r} is not among the head's branches {head.branches}")
        self.backbone = backbone
        self.head = head
        self.strides = tuple(strides)
        self.inference_branch = inference_branch
        self.decoding = decoding
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
        cand = candidates(out, branch, loc.points, loc.level_sizes, self.decoding.per_level(branch))  # [B, K]
        if not use_nms:  # NMS-free: the global top-k is the answer
            cand = top_candidates(cand, self.decoding.detections_per_img)
        return per_image_detections(cand, image_sizes, self.decoding, use_nms=use_nms)

    # ------------------------------------------------------------------ helpers
    def _locations(self, features: list[Tensor]) -> Locations:
        """Location centres of every level, cached per feature-map shapes and device."""
        key = (tuple(f.shape[-2:] for f in features), features[0].device)
        if self._locations_cache is not None and self._locations_cache[0] == key:
            return self._locations_cache[1]
        device = features[0].device
        sizes = [f.shape[-2] * f.shape[-1] for f in features]
        strides = torch.cat([torch.full((size,), float(stride), device=device)
                             for size, stride in zip(sizes, self.strides)])  # [N]
        loc = Locations(location_points(features, self.strides), strides, sizes)
        self._locations_cache = (key, loc)
        return loc

