"""Build the detector from the composed config's ``backbone``, ``assigner`` and ``model`` nodes."""
from date.modeling.backbone import build_resnet_fpn
from date.modeling.detector import MODES, DATEDetector
from date.modeling.head import DATEHead

STRIDES = (8, 16, 32, 64, 128)  # P3-P7


def build_detector(*, backbone, assigner, model, num_classes: int) -> DATEDetector:
    """The entrypoint's only view of the config; the modules themselves take plain arguments."""
    if assigner.mode not in MODES:
        raise ValueError(f"assigner.mode={assigner.mode!r}: expected one of {sorted(MODES)}")
    body = build_resnet_fpn(depth=backbone.depth, weights=str(backbone.weights), fpn_channels=backbone.fpn_channels)
    head = DATEHead(channels=backbone.fpn_channels, num_classes=num_classes, strides=STRIDES,
                    branches=MODES[assigner.mode], num_convs=model.num_convs, use_3dmf=model.use_3dmf,
                    prior_prob=model.prior_prob)
    return DATEDetector(
        backbone=body, head=head, mode=assigner.mode, num_classes=num_classes, strides=STRIDES,
        size_of_interest=tuple(model.size_of_interest), o2m_assigner=assigner.o2m,
        poto_alpha=assigner.poto_alpha, poto_center_radius=assigner.poto_center_radius,
        fcos_center_sampling=assigner.fcos_center_sampling, topk=assigner.topk, topk_alpha=assigner.topk_alpha,
        topk_beta=assigner.topk_beta, score_thresh=model.score_thresh, topk_candidates=model.topk_candidates,
        detections_per_img=model.detections_per_img, nms_thresh=model.nms_thresh,
    )
