"""ResNet + FPN: C3-C5 -> P3-P7 (P6, P7 from the P5 output), all from torchvision's parts."""
import os
import pickle
import urllib.error
from pathlib import Path

import torch
from torchvision import models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


RESNETS = {
    18: (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    34: (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    101: (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
}
# Pretrained backbones keep the stem and stage 1 frozen, as in DATE / FCOS.
TRAINABLE_STAGES = ("layer2", "layer3", "layer4")


class BackboneWeightsError(ValueError):
    """The backbone weights asked for cannot be loaded."""


def build_resnet_fpn(*, depth: int, weights: str, fpn_channels: int) -> BackboneWithFPN:
    """ResNet-{18,34,50,101} with an FPN giving P3-P7 at strides 8-128.

    Args:
        depth: ResNet depth.
        weights: "none" (from scratch: trainable BatchNorm, nothing frozen), "imagenet" (torchvision's
            weights API; FrozenBN, stem + stage 1 frozen) or the path of a local ``.pth`` state dict of a
            torchvision ResNet (same treatment as "imagenet"; for compute nodes without internet).
        fpn_channels: FPN (and head) width.
    Returns:
        A module mapping images [B, 3, H, W] to an OrderedDict of 5 maps [B, fpn_channels, H/s, W/s].
    """
    constructor, imagenet = RESNETS[depth]  # backbone.depth is checked by the schema
    if weights == "none":
        resnet = constructor(weights=None)
    else:
        resnet = constructor(weights=None, norm_layer=FrozenBatchNorm2d)
        resnet.load_state_dict(_pretrained_state_dict(depth, weights, constructor, imagenet))
        for name, param in resnet.named_parameters():
            param.requires_grad_(name.startswith(TRAINABLE_STAGES))

    stage_channels = [resnet.layer2[-1].conv1.in_channels, resnet.layer3[-1].conv1.in_channels,
                      resnet.layer4[-1].conv1.in_channels]  # C3, C4, C5 widths
    return BackboneWithFPN(
        resnet,
        return_layers={"layer2": "c3", "layer3": "c4", "layer4": "c5"},
        in_channels_list=stage_channels,
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),  # in == out: P6 from P5's output
    )


def check_weights(depth: int, weights: str) -> None:
    """Load and check ``backbone.weights`` as :func:`build_resnet_fpn` will (BackboneWeightsError), before anything is
    created: a missing, unreadable or mismatched file fails the command at once, not after the run has started."""
    if weights != "none":
        constructor, imagenet = RESNETS[depth]
        _pretrained_state_dict(depth, weights, constructor, imagenet)


def _pretrained_state_dict(depth: int, weights: str, constructor, imagenet: models.WeightsEnum) -> dict:
    if weights == "imagenet":
        try:
            return imagenet.get_state_dict(progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            file_name = os.path.basename(imagenet.url)
            raise BackboneWeightsError(
                f"backbone.weights=imagenet: could not download the ImageNet weights of resnet{depth} from "
                f"{imagenet.url} ({error}). This machine is probably offline. Download that file where there "
                f"is internet and pass its path instead, e.g. backbone.weights=/path/to/{file_name}, or copy "
                f"it to {Path(torch.hub.get_dir()) / 'checkpoints' / file_name}; backbone.weights=none trains "
                f"from scratch."
            ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone.weights={weights!r}: no such file. Pass none, imagenet, or the path of a torchvision "
            f"ResNet-{depth} state dict (.pth)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and tensor errors all mean the same: not a usable file
        # one line, without torch's advice to load the file unsafely (weights_only=False)
        reason = ("weights_only=True refuses it" if isinstance(error, pickle.UnpicklingError) else
                  f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}")
        raise BackboneWeightsError(
            f"backbone.weights={path} cannot be read by torch.load ({reason}), so it is no "
            f"state dict saved by torch.save, or it is damaged. Pass the .pth file of a torchvision ResNet-{depth}, "
            "imagenet, or none.") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    reference = constructor(weights=None).state_dict()
    # The classifier is unused, and BatchNorm's step counters are absent from older files.
    body = {key for key in reference if not key.startswith("fc.") and not key.endswith("num_batches_tracked")}
    if not isinstance(state, dict) or not body.issubset(state) or not set(state).issubset(reference):
        raise BackboneWeightsError(
            f"backbone.weights={path}: not a ResNet-{depth} state dict in torchvision's layout "
            f"(keys like conv1.weight, layer1.0.conv1.weight). Check that backbone.depth matches the file."
        )
    return {**reference, **state}
