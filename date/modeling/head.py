"""The DATE head: cls and reg towers and per-level scales shared by both branches, plus the
per-branch predictors (the only unshared layers) and the optional 3D max-filter (DATE-F-3DMF).

Legend: B = images, L = FPN levels, N = locations over all levels (sum of H_l * W_l), C = classes,
D = channels.
"""
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRANCHES = ("o2o", "o2m")


class Scale(nn.Module):
    """A learnable scalar multiplier of one FPN level's box output, read as ``.scale`` (the head multiplies
    by it, or by its detached value for the o2m detach)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MaxFiltering3D(nn.Module):
    """DeFCN's 3D max filtering: a max over a (scale x 3 x 3) neighbourhood across adjacent FPN levels,
    which suppresses duplicate activations of the same object in neighbouring locations and levels."""

    def __init__(self, *, channels: int, kernel_size: int = 3, tau: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(32, channels)
        self.margin = tau // 2
        self.max_pool = nn.MaxPool3d((tau + 1, kernel_size, kernel_size), stride=1,
                                     padding=(self.margin, kernel_size // 2, kernel_size // 2))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        convs = [self.conv(x) for x in features]
        outputs = []
        for level, x in enumerate(convs):
            neighbours = range(max(0, level - self.margin), min(len(convs), level + self.margin + 1))
            stack = [x if k == level else F.interpolate(convs[k], size=x.shape[-2:], mode="bilinear", align_corners=False)
                     for k in neighbours]
            pooled = self.max_pool(torch.stack(stack, dim=2))[:, :, min(level, self.margin)]  # [B, D, H, W]
            outputs.append(F.relu(self.norm(pooled + features[level])))
        return outputs


def _generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, a parameter's module name)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _flatten(maps: list[Tensor]) -> Tensor:
    """[B, K, H_l, W_l] per level -> [B, N, K], level-major then row-major (matching the locations)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)


@dataclass(frozen=True)
class HeadOptions:
    """How the head is built and run (the ``model.*`` keys of the same names; their defaults: date/config.py)."""

    num_convs: int  # convs per tower (GN(32) + ReLU after each)
    use_3dmf: bool  # multiply the o2o score by a 3D-max-filter on the reg tower (DATE-F-3DMF)
    prior_prob: float  # initial foreground probability of the classifiers
    # both branches on the same towers (the official ``share_stacked_convs``); False gives the o2m branch its own
    # (``o2m_towers``), the Scales still shared as in the official code
    share_towers: bool
    # both branches on the same per-level Scales; False gives the o2m branch its own (``o2m_scales``)
    share_scales: bool
    # "exp" (ltrb = exp(scale * x) pixels, the paper's FCOS) or "linear" (relu(scale * x) * stride,
    # torchvision's FCOS and the o2o branch)
    o2m_box_coding: str
    # the o2m predictors see detached tower features and Scales, so the o2m loss trains only them (a diagnostic:
    # the branches then share no gradient)
    o2m_detach: bool


class DATEHead(nn.Module):
    """Towers (shared by both branches, as in the paper, or one set per branch) + per-branch predictors.

    Args:
        channels: input (FPN) and tower width D.
        num_classes: C.
        strides: the stride of each FPN level (one Scale per level).
        branches: which predictors exist: ("o2o",), ("o2m",) or both.
        options: the towers, the 3D max-filter, the classifier prior and the o2m branch's coding (HeadOptions).
    """

    def __init__(self, *, channels: int, num_classes: int, strides: tuple[int, ...], branches: tuple[str, ...],
                 options: HeadOptions):
        super().__init__()
        num_convs, use_3dmf = options.num_convs, options.use_3dmf
        if not branches or not set(branches) <= set(BRANCHES):
            raise ValueError(f"branches={branches!r}: expected a non-empty subset of {BRANCHES}")
        # One draw from the global RNG, the same in every assigner mode, seeds the head's init; the layers'
        # default inits draw different amounts per mode, so the global RNG is set back after them.
        init_seed = int(torch.randint(0, 2**62, ()))
        global_rng = torch.get_rng_state()
        self.strides = tuple(strides)
        self.branches = tuple(branches)
        self.o2m_box_coding, self.o2m_detach = str(options.o2m_box_coding), options.o2m_detach
        self.cls_tower = _tower(channels, num_convs)
        self.reg_tower = _tower(channels, num_convs)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)
        both = len(self.branches) > 1  # a single-branch detector has nothing to share
        self.o2m_towers = None
        if both and not options.share_towers:
            self.o2m_towers = nn.ModuleDict({"cls_tower": _tower(channels, num_convs),
                                             "reg_tower": _tower(channels, num_convs)})
        self.o2m_scales = nn.ModuleList(Scale(1.0) for _ in strides) if both and not options.share_scales else None

        def conv(out_channels):
            return nn.Conv2d(channels, out_channels, 3, padding=1)

        self.predictors = nn.ModuleDict()
        if "o2o" in branches:
            self.predictors["o2o"] = nn.ModuleDict({"cls": conv(num_classes), "box": conv(4)})
        if "o2m" in branches:
            self.predictors["o2m"] = nn.ModuleDict({"cls": conv(num_classes), "box": conv(4), "ctr": conv(1)})
        self.max_filter = MaxFiltering3D(channels=channels) if use_3dmf else None
        self.filter_predictor = conv(1) if use_3dmf else None
        self._init_weights(init_seed, options.prior_prob)
        torch.set_rng_state(global_rng)

    def _init_weights(self, init_seed: int, prior_prob: float) -> None:
        """Normal(0.01) convs, zero biases, the classifiers' prior. Each conv draws from a generator keyed by
        its name, so a layer that two assigner modes share (towers, the o2o predictors of POTO and DATE, the
        o2m predictors of FCOS and DATE) starts bit-identical for one seed, whatever other layers exist:
        the comparison of the modes is then paired by seed."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01, generator=_generator(init_seed, name))
                nn.init.zeros_(module.bias)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for branch in self.predictors.values():
            nn.init.constant_(branch["cls"].bias, bias)

    def forward(self, features: list[Tensor], branches: tuple[str, ...]) -> dict[str, dict[str, Tensor]]:
        """Run the towers and the predictors of ``branches`` only.

        Args:
            features: L maps [B, D, H_l, W_l].
        Returns:
            {branch: outputs} with, flattened over levels,
            o2o: "cls" [B, N, C] logits, "ltrb" [B, N, 4] distances in pixels = relu(scale * x) * stride,
                 and with 3DMF "filter" [B, N] logits;
            o2m: "cls" [B, N, C], "ltrb" [B, N, 4] pixels (see o2m_box_coding), "ctr" [B, N] logits.
        """
        towers: dict[str, tuple] = {}  # tower set -> (cls features, reg features)
        out = {}
        for name in branches:
            cls_feats, reg_feats, scales = self._towers(features, name, towers)
            pred = self.predictors[name]
            raw = [pred["box"](x) * scale for scale, x in zip(scales, reg_feats)]
            if name == "o2o" or self.o2m_box_coding == "linear":
                ltrb = [F.relu(r) * s for r, s in zip(raw, self.strides)]
            else:
                # exp of a clamped log-distance: finite under bf16 and early in training.
                ltrb = [r.float().clamp(max=math.log(1e5)).exp() for r in raw]
            out[name] = {"cls": _flatten([pred["cls"](x) for x in cls_feats]), "ltrb": _flatten(ltrb)}
            if name == "o2m":
                out[name]["ctr"] = _flatten([pred["ctr"](x) for x in cls_feats])[..., 0]
            if name == "o2o" and self.max_filter is not None:
                filters = [self.filter_predictor(x) for x in self.max_filter(reg_feats)]
                out[name]["filter"] = _flatten(filters)[..., 0]
        return out

    def _towers(self, features: list[Tensor], branch: str, done: dict) -> tuple[list, list, list]:
        """The tower features and Scales ``branch`` predicts from, each tower set run once per forward."""
        own_towers = branch == "o2m" and self.o2m_towers is not None
        key = "o2m" if own_towers else "shared"
        if key not in done:
            cls_tower, reg_tower = ((self.o2m_towers["cls_tower"], self.o2m_towers["reg_tower"]) if own_towers
                                    else (self.cls_tower, self.reg_tower))
            done[key] = ([cls_tower(x) for x in features], [reg_tower(x) for x in features])
        cls_feats, reg_feats = done[key]
        own_scales = branch == "o2m" and self.o2m_scales is not None
        scales = [scale.scale for scale in (self.o2m_scales if own_scales else self.scales)]
        if branch == "o2m" and self.o2m_detach:
            return [x.detach() for x in cls_feats], [x.detach() for x in reg_feats], [s.detach() for s in scales]
        return cls_feats, reg_feats, scales
