"""ONNX export (date/export.py): real checkpoints of a short training of DATE (dual) and of the FCOS baseline
(o2m), exported by ``python -m date.export``, give in onnxruntime the detections ``DATEDetector.predict``
gives in PyTorch, on the synthetic val images at two image sizes and batch sizes 1 and 2 (one graph: dynamic
batch, height and width). DATE's graph has no NMS, the baseline's has its NonMaxSuppression."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import batched_nms

from conftest import SMOKE, run_in_process, run_module, sandbox_env
from date.data.build import build_val_dataset
from date.data.loader import build_eval_loader
from date.export import OUTPUT_NAMES, ExportableDetector, nms_keep, nms_keep_onnx
from date.modeling.build import checkpoint_config, detector_from_checkpoint
from date.runtime import checkpoint as ckpt

# SMOKE cut to one epoch (2 iterations, one evaluation) and one head conv: a trained checkpoint in seconds
TRAIN = [*SMOKE, "model.num_convs=1", "schedule.epochs=1", "schedule.lr_steps=[1]", "tracking.system_metrics=false"]
# Score thresholds inside each barely trained branch's range of top-100 scores on the val images (o2o ~0.012-0.027,
# o2m ~0.075-0.087 with the paired head init of e8a4835), so that images keep from 0 to 100 detections and the
# padding is compared too
MODES = {"dual": "model.score_thresh=0.015", "o2m": "model.score_thresh=0.08"}
SIZES = ((128, 128), (200, 256))  # (test_short_size, max_size): 128 px images padded to 128, 200 px padded to 256


# The tests reading `exported` share one xdist worker, so that its two trainings and exports run once.
ON_EXPORTED_WORKER = pytest.mark.xdist_group("exported")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_cache):
    """{mode: (model_final.pth, its .onnx written by `python -m date.export` next to it)}."""
    root = tmp_path_factory.mktemp("export")
    env = sandbox_env(root, data_cache)
    try:
        for mode, threshold in MODES.items():
            train = run_in_process("date.train", [f"assigner={mode}", threshold, *TRAIN, f"hydra.run.dir={root / mode}"],
                                   env=env, cwd=root)
            assert train.returncode == 0, train.stderr[-3000:]
        checkpoints = {mode: root / mode / ckpt.FINAL for mode in MODES}
        # in a process of its own: torch.export's tracing in this one once left torchvision's NMS failing with
        # std::bad_alloc in the tests after it (1 run of 2)
        export = run_module("date.export", ["-m", f"checkpoint={','.join(map(str, checkpoints.values()))}"],
                            env=env, cwd=root)
        assert export.returncode == 0, export.stderr[-3000:]
        assert "onnxscript" not in export.stdout + export.stderr  # its ~330 INFO lines stay off the console
        yield {mode: (path, path.with_suffix(".onnx")) for mode, path in checkpoints.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def val_batches(checkpoint, data_cache):
    """(images, image_sizes) of the val split of the checkpoint's dataset as the eval loader batches it, at each
    of SIZES and batch sizes 1 and 2; the 200 px batches also cropped to 200x128 (H != W, padded to 256x128)."""
    for test_short_size, max_size in SIZES:
        dataset_cfg = checkpoint_config(ckpt.load(checkpoint)).dataset
        dataset_cfg.merge_with({"cache_dir": str(data_cache), "test_short_size": test_short_size, "max_size": max_size})
        val_set = build_val_dataset(dataset_cfg)
        for batch_size in (1, 2):
            for images, targets in build_eval_loader(val_set, batch_size=batch_size, num_workers=0):
                image_sizes = torch.tensor([t["image_size"] for t in targets])
                yield images, image_sizes
                if images.shape[-1] > 128:
                    cropped_sizes = torch.stack([image_sizes[:, 0], image_sizes[:, 1].clamp(max=128)], dim=1)
                    yield images[..., :128].contiguous(), cropped_sizes


def by_label_and_score(boxes, scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections sorted by label, then by decreasing score (an order both runtimes agree on)."""
    order = np.lexsort((-np.asarray(scores), np.asarray(labels)))
    return np.asarray(boxes)[order], np.asarray(scores)[order], np.asarray(labels)[order]


def assert_same_detections(outputs, i: int, reference: dict, *, box_rtol: float, score_atol: float) -> None:
    """Image i of padded outputs (boxes, scores, labels, num_detections) holds ``reference``'s detections
    (DATEDetector.predict's) up to the tolerances, and padding after them."""
    boxes, scores, labels, num = (np.asarray(out) for out in outputs)
    limit, n = scores.shape[1], len(reference["scores"])
    assert boxes.shape == (len(num), limit, 4) and labels.shape == (len(num), limit) and num[i] == n
    assert (labels[i, n:] == -1).all() and (scores[i, n:] == 0).all() and (boxes[i, n:] == 0).all()
    ours = by_label_and_score(boxes[i, :n], scores[i, :n], labels[i, :n])
    ref_boxes, ref_scores, ref_labels = by_label_and_score(reference["boxes"].numpy(), reference["scores"].numpy(),
                                                           reference["labels"].numpy())
    np.testing.assert_array_equal(ours[2], ref_labels)
    np.testing.assert_allclose(ours[0], ref_boxes, rtol=box_rtol, atol=1e-3)
    np.testing.assert_allclose(ours[1], ref_scores, rtol=0, atol=score_atol)


@pytest.mark.slow
@ON_EXPORTED_WORKER
@pytest.mark.parametrize("mode", MODES)
def test_onnxruntime_detects_as_pytorch_at_every_batch_and_image_size(exported, data_cache, mode):
    """ExportableDetector in PyTorch equals predict (to float rounding), then onnxruntime equals it (the brief's
    tolerances: boxes 1e-3 relative, scores 1e-4)."""
    checkpoint, onnx_path = exported[mode]
    saved = ckpt.load(checkpoint)
    detector = detector_from_checkpoint(saved, num_classes=checkpoint_config(saved).dataset.num_classes).eval()
    exportable = ExportableDetector(detector)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shapes, counts = set(), []
    for images, image_sizes in val_batches(checkpoint, data_cache):
        shapes.add(tuple(images.shape))
        with torch.no_grad():
            reference = detector.predict(images, [tuple(s) for s in image_sizes.tolist()])
            eager = exportable(images, image_sizes)
        onnx_out = session.run(list(OUTPUT_NAMES), {"images": images.numpy(), "image_sizes": image_sizes.numpy()})
        for i, ref in enumerate(reference):
            assert_same_detections(eager, i, ref, box_rtol=1e-5, score_atol=1e-6)
            assert_same_detections(onnx_out, i, ref, box_rtol=1e-3, score_atol=1e-4)
            counts.append(len(ref["scores"]))
    assert shapes == {(b, 3, h, w) for b in (1, 2) for h, w in ((128, 128), (256, 256), (256, 128))}
    limit = detector.decoding.detections_per_img
    assert 0 < max(counts) and min(counts) < limit, f"{counts}: every image kept none or all {limit}; see MODES"


class NMSOnly(torch.nn.Module):
    """The FCOS baseline's NMS alone (its checkpoint above is too briefly trained for its boxes to overlap)."""

    def forward(self, boxes, scores, labels):
        return nms_keep(boxes, scores, labels, 3, 0.6, 0.01)


def test_nms_in_onnxruntime_keeps_what_torchvision_batched_nms_keeps(tmp_path):
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(2, 12, 1, 2, generator=g) * 200  # 2 images, 12 clusters of 25 overlapping boxes each
    xy = (centres + torch.randn(2, 12, 25, 2, generator=g) * 4).flatten(1, 2)
    wh = 20 + torch.rand(2, 300, 2, generator=g) * 20
    boxes, scores = torch.cat([xy - wh / 2, xy + wh / 2], dim=-1), torch.rand(2, 300, generator=g)
    labels = torch.randint(0, 3, (2, 300), generator=g)
    program = torch.onnx.export(NMSOnly().eval(), (boxes, scores, labels), dynamo=True, input_names=["b", "s", "l"],
                                dynamic_shapes=({0: "batch", 1: "k"}, {0: "batch", 1: "k"}, {0: "batch", 1: "k"}),
                                custom_translation_table={torch.ops.date.nms_keep.default: nms_keep_onnx})
    program.save(str(tmp_path / "nms.onnx"))
    session = ort.InferenceSession(str(tmp_path / "nms.onnx"), providers=["CPUExecutionProvider"])
    for b, k in ((2, 300), (1, 120)):  # dynamic batch and candidate count
        onnx_keep = session.run(None, {"b": boxes[:b, :k].numpy(), "s": scores[:b, :k].numpy(),
                                       "l": labels[:b, :k].numpy()})[0]
        eager_keep = NMSOnly()(boxes[:b, :k], scores[:b, :k], labels[:b, :k]).numpy()
        for i in range(b):
            above = (scores[i, :k] > 0.01).nonzero()[:, 0]
            kept = above[batched_nms(boxes[i, above], scores[i, above], labels[i, above], 0.6)]
            assert sorted(np.flatnonzero(onnx_keep[i])) == sorted(kept.tolist())
            assert sorted(np.flatnonzero(eager_keep[i])) == sorted(kept.tolist())
            assert 0 < len(kept) < len(above) < k  # boxes suppressed, low scores dropped


def op_types(path) -> set[str]:
    model = onnx.load(str(path))
    return {node.op_type for nodes in [model.graph.node, *(f.node for f in model.functions)] for node in nodes}


@pytest.mark.slow
@ON_EXPORTED_WORKER
def test_date_graph_has_no_nms_and_the_fcos_graph_has_its_nms(exported):
    date_ops, fcos_ops = op_types(exported["dual"][1]), op_types(exported["o2m"][1])
    assert "NonMaxSuppression" not in date_ops and "TopK" in date_ops
    assert "NonMaxSuppression" in fcos_ops


def test_missing_checkpoint_is_one_paragraph(tmp_path, train_env):
    missing = tmp_path / "nowhere" / ckpt.FINAL
    result = run_in_process("date.export", [f"checkpoint={missing}"], env=train_env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"Checkpoint {missing} does not exist." in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.onnx"))
