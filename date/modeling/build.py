"""Config -> objects, once: the detector and the criterion from the typed config nodes of date/config.py.

``cfg`` is a composed training config (or a checkpoint's, see :func:`checkpoint_config`): the builders
read ``cfg.backbone``, ``cfg.assigner``, ``cfg.model`` and ``cfg.branch_weighting``.
"""
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from date.assign import POTO, FCOSAssigner, TopKAssigner
from date.config import BRANCHES, Mode, O2MRule, TrainConfig
from date.criterion import DATECriterion
from date.modeling.backbone import build_resnet_fpn
from date.modeling.decode import Decoding
from date.modeling.detector import DATEDetector
from date.modeling.head import DATEHead, HeadOptions
from date.runtime.checkpoint import CheckpointError

STRIDES = (8, 16, 32, 64, 128)  # P3-P7


def build_detector(cfg, *, num_classes: int) -> DATEDetector:
    """The network of ``cfg.assigner.mode``'s branches; it infers with o2o (no NMS) unless only o2m trains."""
    mode, m = Mode(cfg.assigner.mode), cfg.model
    body = build_resnet_fpn(depth=cfg.backbone.depth, weights=str(cfg.backbone.weights),
                            fpn_channels=cfg.backbone.fpn_channels)
    options = HeadOptions(num_convs=m.num_convs, use_3dmf=m.use_3dmf, prior_prob=m.prior_prob,
                          share_towers=m.share_towers, share_scales=m.share_scales,
                          o2m_box_coding=str(m.o2m_box_coding), o2m_detach=m.o2m_detach)
    head = DATEHead(channels=cfg.backbone.fpn_channels, num_classes=num_classes, strides=STRIDES,
                    branches=BRANCHES[mode], options=options)
    decoding = Decoding(score_thresh=m.score_thresh, topk_candidates=m.topk_candidates,
                        detections_per_img=m.detections_per_img, nms_thresh=m.nms_thresh)
    return DATEDetector(backbone=body, head=head, strides=STRIDES, inference_branch=inference_branch(mode),
                        decoding=decoding)


def inference_branch(mode: Mode) -> str:
    """The branch a detector of ``mode`` infers with: o2o (no NMS) unless only o2m trains."""
    return "o2m" if mode == Mode.o2m else "o2o"


def build_criterion(cfg) -> DATECriterion:
    """The assigners of the trained branches, the term weights and the branch-weighting schedule."""
    a, branches = cfg.assigner, BRANCHES[Mode(cfg.assigner.mode)]
    o2o = POTO(alpha=a.poto_alpha, center_radius=a.poto_center_radius) if "o2o" in branches else None
    o2m = None
    if "o2m" in branches and O2MRule(a.o2m) == O2MRule.topk:
        o2m = TopKAssigner(k=a.topk, alpha=a.topk_alpha, beta=a.topk_beta)
    elif "o2m" in branches:
        o2m = FCOSAssigner(strides=STRIDES, size_of_interest=tuple(cfg.model.size_of_interest),
                           center_sampling_radius=a.fcos_center_sampling)
    return DATECriterion(o2o=o2o, o2m=o2m, o2m_box_loss=str(cfg.model.o2m_box_loss), term_weights=cfg.model.loss_weights,
                         branch_weighting=OmegaConf.to_object(cfg.branch_weighting))


def checkpoint_config(saved: dict) -> DictConfig:
    """The typed training config a checkpoint of date.train was written with."""
    config = saved.get("config") or {}
    if not all(k in config for k in ("backbone", "assigner", "model", "dataset")):
        raise CheckpointError("The checkpoint holds no training config (backbone / assigner / model / dataset); "
                              "only checkpoints written by date.train can be evaluated.")
    if "size_of_interest" in config["dataset"]:  # written before the FCOS ranges moved to model.size_of_interest
        config = {**config, "dataset": {k: v for k, v in config["dataset"].items() if k != "size_of_interest"}}
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConfig), config)
    except Exception as exc:  # a key or value this version does not know
        raise CheckpointError(f"The checkpoint's config does not fit this version of the suite: "
                              f"{str(exc).splitlines()[0]}. Evaluate it with the version that wrote it.") from None


def checkpoint_num_classes(saved: dict, checkpoint) -> int:
    """The class count of a checkpoint's classifiers (read from the weights: no dataset needed)."""
    classes = {int(v.shape[0]) for k, v in saved.get("model", {}).items() if k.endswith(".cls.weight")}
    if len(classes) != 1:
        raise CheckpointError(f"{checkpoint} holds no detector weights with one class count (classifier sizes "
                              f"found: {sorted(classes)}); only checkpoints written by date.train can be used.")
    return classes.pop()


def detector_from_checkpoint(saved: dict, *, num_classes: int) -> DATEDetector:
    """The detector of a checkpoint's config, with the checkpoint's weights."""
    cfg = checkpoint_config(saved)
    pretrained = cfg.backbone.weights != "none"
    cfg.backbone.weights = "none"  # the checkpoint brings the weights
    model = build_detector(cfg, num_classes=num_classes)
    if pretrained:
        _freeze_batchnorm(model.backbone.body)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"The checkpoint's weights do not fit the model of its own config: "
                              f"{str(exc).splitlines()[0]}") from None
    return model


def _freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm2d -> FrozenBatchNorm2d in place (pretrained backbones are trained with frozen BN)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_batchnorm(child)
