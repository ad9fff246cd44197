"""Export a checkpoint's inference path to ONNX: ``python -m date.export checkpoint=<model_final.pth> out=model.onnx``.

The graph is the trained branch's inference as ``DATEDetector.predict`` runs it: o2o (POTO, DATE) with its
top-k decoding and no NMS; o2m (the FCOS baseline) with its NMS, an ONNX ``NonMaxSuppression`` node.
Batch size and image size are dynamic. Written by ``torch.onnx.export(dynamo=True)`` (torch.export, then
onnxscript), which needs the ``export`` extra (``pip install -e ".[export]"``).

Input ``images``: float32 [B, 3, H, W], what ``predict`` takes: each image resized so its short side is
``dataset.test_short_size`` (long side <= ``max_size``), normalised with the ImageNet mean and std, then
zero-padded at the bottom / right to H, W multiples of 128 (steps 1-3 of date/inference.py; ``preprocess`` does
all three). Normalisation stays outside the graph because the padding comes after it (zeros of the normalised
image). ``image_sizes``: int64 [B, 2], each image's (h, w) before padding (boxes are clipped to it). Boxes come out
in those pixels: scaling them to the original image (date.inference.rescale) is the caller's.

Outputs (ONNX needs a fixed structure, so detections are padded): ``boxes`` [B, K, 4] xyxy in input pixels,
``scores`` [B, K], ``labels`` [B, K] int64 (contiguous labels, as ``predict``), ``num_detections`` [B]:
image i's detections are its first num_detections[i] rows, by decreasing score; the rest are zeros (labels
-1). K = ``model.detections_per_img``. Bad input ends with a message and exit code 2, as in date.evaluate.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchvision.ops import batched_nms

from date import cli
from date.config import ConfigError, ExportConfig, check_ranges
from date.errors import INPUT_ERRORS
from date.inference import SIZE_DIVISIBILITY
from date.modeling.build import checkpoint_num_classes, detector_from_checkpoint
from date.modeling.decode import candidates, location_points
from date.modeling.detector import DATEDetector
from date.runtime import checkpoint as ckpt
from date.runtime.logs import errors_as_messages, quiet_third_party
from date.runtime.outputs import check_output_file

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
OPSET = 18


# ------------------------------------------------------------------ NMS as one op
@torch.library.custom_op("date::nms_keep", mutates_args=())
def nms_keep(boxes: Tensor, scores: Tensor, labels: Tensor, num_classes: int, iou_threshold: float,
             score_threshold: float) -> Tensor:
    """Which candidates survive the FCOS baseline's NMS, as a mask [B, K] over boxes [B, K, 4] / scores [B, K].

    Per image: torchvision's ``batched_nms`` (per class) of the candidates scoring above ``score_threshold``,
    exactly as date.modeling.decode.per_image_detections runs it. An op of its own because ONNX's NonMaxSuppression does
    the whole batch and every class at once (see :func:`nms_keep_onnx`), while a Python loop over images
    cannot be exported with a dynamic batch.
    """
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for i in range(scores.shape[0]):
        candidates = (scores[i] > score_threshold).nonzero()[:, 0]
        kept = batched_nms(boxes[i][candidates], scores[i][candidates], labels[i][candidates], iou_threshold)
        keep[i, candidates[kept]] = True
    return keep


@nms_keep.register_fake
def _nms_keep_fake(boxes: Tensor, scores: Tensor, labels: Tensor, num_classes: int, iou_threshold: float,
                   score_threshold: float) -> Tensor:
    return torch.empty_like(scores, dtype=torch.bool)


def nms_keep_onnx(boxes, scores, labels, num_classes: int, iou_threshold: float, score_threshold: float):
    """:func:`nms_keep` in ONNX: one NonMaxSuppression over [B, C, K] class scores (a candidate scores only
    in its own class, 0 elsewhere, below any threshold), its selected (image, class, box) rows scattered into
    the mask."""
    import onnx  # the export extra: imported when exporting only
    from onnxscript import opset18 as op

    one_hot = op.OneHot(labels, op.Constant(value_int=num_classes), op.Constant(value_floats=[0.0, 1.0]), axis=1)
    class_scores = op.Mul(one_hot, op.Unsqueeze(scores, [1]))  # [B, C, K]
    selected = op.NonMaxSuppression(boxes, class_scores, op.Constant(value_ints=[2**62]),
                                    op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[score_threshold]))  # [M, 3]: image, class, box
    image_and_box = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # [M, 2]
    ones = op.Expand(op.Constant(value_floats=[1.0]), op.Shape(image_and_box, start=0, end=1))  # [M]
    mask = op.ScatterND(op.ConstantOfShape(op.Shape(scores)), image_and_box, ones)  # [B, K] float zeros, M ones
    return op.Cast(mask, to=onnx.TensorProto.BOOL)


# ------------------------------------------------------------------ the exported module
class ExportableDetector(nn.Module):
    """The inference branch of a DATEDetector as a graph ONNX can hold: the detector's own layers and candidates
    (date.modeling.decode.candidates), then batch-wide ops where the decoding loops over images (clipping to each
    image's size, the score threshold, NMS as one op) and no data-dependent shapes: detections padded to
    ``detections_per_img``.
    Its detections equal ``detector.predict``'s (tests/test_export.py)."""

    def __init__(self, detector: DATEDetector):
        super().__init__()
        self.detector = detector
        self.branch = detector.inference_branch
        self.num_classes = detector.head.predictors[self.branch]["cls"].out_channels
        self.eval()  # inference only (the detector's too)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """images [B, 3, H, W] and image_sizes [B, 2] (h, w) -> boxes [B, K, 4], scores [B, K], labels [B, K],
        num_detections [B] (see the module docstring)."""
        d, decoding = self.detector, self.detector.decoding
        features = list(d.backbone(images).values())
        out = d.head(features, (self.branch,))[self.branch]
        # the points without the detector's cache, whose key would hold the export's symbolic sizes
        cand = candidates(out, self.branch, location_points(features, d.strides),
                          [f.shape[-2] * f.shape[-1] for f in features], decoding.per_level(self.branch))  # [B, K]
        boxes = clip_boxes(cand.boxes, image_sizes)
        if self.branch == "o2o":
            ranked = cand.scores
        else:
            keep = nms_keep(boxes, cand.scores, cand.labels, self.num_classes, decoding.nms_thresh,
                            decoding.score_thresh)
            ranked = torch.where(keep, cand.scores, -1.0)  # suppressed candidates rank last, below the threshold
        ranked, order = ranked.topk(min(decoding.detections_per_img, ranked.shape[1]), dim=1)
        return padded_detections(boxes.gather(1, order[..., None].expand(-1, -1, 4)), ranked,
                                 cand.labels.gather(1, order), decoding.score_thresh, decoding.detections_per_img)


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """torchvision's clip_boxes_to_image with a size per image: boxes [B, K, 4], image_sizes [B, 2] (h, w)."""
    high = image_sizes.flip(1).repeat(1, 2)[:, None, :].to(boxes.dtype)  # [B, 1, 4]: w, h, w, h
    return torch.minimum(boxes.clamp(min=0), high)


def padded_detections(boxes: Tensor, scores: Tensor, labels: Tensor, score_thresh: float,
                      size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidates sorted by score -> (boxes, scores, labels) padded to ``size`` rows, the rows at or below
    ``score_thresh`` zeroed (labels -1), and the count of the others per image."""
    valid = scores > score_thresh  # a prefix of each row: scores are sorted
    pad = size - scores.shape[1]
    boxes = F.pad(torch.where(valid[..., None], boxes, 0.0), (0, 0, 0, pad))
    scores = F.pad(torch.where(valid, scores, 0.0), (0, pad))
    labels = F.pad(torch.where(valid, labels, -1), (0, pad), value=-1)
    return boxes, scores, labels, valid.sum(dim=1)


# ------------------------------------------------------------------ export
def export(detector: DATEDetector, out: Path) -> Path:
    """Write the ONNX graph of ``detector``'s inference branch to ``out`` (dynamic batch, height and width)."""
    module = ExportableDetector(detector)
    # sizes of 2+ in every dynamic dimension: torch.export fixes dimensions whose example size is 1
    example = (torch.zeros(2, 3, 2 * SIZE_DIVISIBILITY, 3 * SIZE_DIVISIBILITY),
               torch.tensor([[2 * SIZE_DIVISIBILITY, 3 * SIZE_DIVISIBILITY]] * 2))
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = SIZE_DIVISIBILITY * torch.export.Dim("height_blocks", min=1, max=64)
    width = SIZE_DIVISIBILITY * torch.export.Dim("width_blocks", min=1, max=64)
    with torch.no_grad():
        program = torch.onnx.export(module, example, dynamo=True, opset_version=OPSET,
                                    input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes={"images": {0: batch, 2: height, 3: width},
                                                    "image_sizes": {0: batch}},
                                    custom_translation_table={torch.ops.date.nms_keep.default: nms_keep_onnx})
    save_atomic(program, out)
    return out


def save_atomic(program, out: Path) -> None:
    """``program.save(out)`` through a temporary file in the same folder: ``out`` is the old or the new model, never
    half of one (SaveError naming the path and the reason when writing fails)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        program.save(str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(out.parent).free / 2**30
        raise ckpt.SaveError(f"Could not write {out}: {exc.strerror or exc} ({free:.2f} GiB free on its file system); "
                             "that file is unchanged. Free some space or pick another out= and rerun.") from None


def is_onnx_model(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model (an earlier export, replaced without asking)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's decode errors, an unreadable file: not one
        return False
    return True


def run(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("No checkpoint given: pass checkpoint=<path of model_final.pth or last.pth>.")
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"The ONNX export needs {' and '.join(missing)}, which are not installed: "
                          'pip install -e ".[export]" -c constraints.txt (the export extra, with onnxruntime).')
    checkpoint = Path(cfg.checkpoint).expanduser()
    out = check_output_file(str(cfg.out or checkpoint.with_suffix(".onnx")), key="out", kind="an ONNX model",
                            inputs={"checkpoint": checkpoint}, is_own=is_onnx_model, overwrite=cfg.overwrite)
    saved = ckpt.load(checkpoint)
    detector = detector_from_checkpoint(saved, num_classes=checkpoint_num_classes(saved, checkpoint))
    export(detector, out)
    print(f"Exported the {detector.inference_branch} branch of {checkpoint} to {out}")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> Path:
    quiet_third_party()
    with errors_as_messages({**dict.fromkeys(INPUT_ERRORS, 2), ckpt.SaveError: 1}):
        return run(cfg)



ENTRYPOINT = cli.Entrypoint(
    module="date.export", config_name="export", schema=ExportConfig, check_config=check_ranges,
    usage="python -m date.export checkpoint=<model_final.pth> [out=model.onnx] [overwrite=true]",
    about="Exports the inference branch of a checkpoint of date.train to ONNX (opset 18, dynamic batch and image "
          "size; inputs, outputs and preprocessing: date/export.py). Needs the export extra: "
          'pip install -e ".[export]". Writes nothing but out=.')


if __name__ == "__main__":
    cli.main(ENTRYPOINT, main)
