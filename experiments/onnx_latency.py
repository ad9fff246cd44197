"""Batch-1 CPU latency of the ONNX export (date/export.py) against PyTorch, for DATE and the FCOS baseline, in one run.

    python experiments/onnx_latency.py --size 512 --threads 2
    python experiments/onnx_latency.py --checkpoint <dual run>/model_final.pth --checkpoint <o2m run>/model_final.pth

Times (a) ``DATEDetector.predict`` in PyTorch and (b) the exported graph in onnxruntime's CPU provider, on the
same normalised image, with the same number of threads, the four calls taken in turn; DATE infers with its
o2o branch (top-k, no NMS), the FCOS baseline with o2m + NMS (in PyTorch torchvision's batched_nms, in ONNX a
NonMaxSuppression node).
Without --checkpoint the two detectors are randomly initialised, as date.train builds them for COCO
(``assigner=dual`` and ``assigner=o2m``; 80 classes; --backbone); an untrained o2m branch keeps all its
candidates above the score threshold, the most NMS work. Prints a markdown table for the README.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from date.bench import make_batch, parse_size
from date.config import compose_config
from date.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from date.export import export
from date.modeling.build import build_detector, checkpoint_num_classes, detector_from_checkpoint
from date.modeling.detector import DATEDetector
from date.runtime import checkpoint as ckpt

NUM_CLASSES = 80
NAMES = {"o2o": "DATE (o2o, no NMS)", "o2m": "FCOS baseline (o2m + NMS)"}


def detectors(args: argparse.Namespace) -> list[DATEDetector]:
    """The checkpoints' detectors, or randomly initialised DATE and FCOS baseline ones."""
    if args.checkpoint:
        return [detector_from_checkpoint(saved, num_classes=checkpoint_num_classes(saved, Path(path))).eval()
                for path, saved in ((p, ckpt.load(Path(p))) for p in args.checkpoint)]
    torch.manual_seed(0)
    return [build_detector(compose_config([f"backbone={args.backbone}", f"assigner={mode}", "dataset=coco"]),
                           num_classes=NUM_CLASSES).eval() for mode in ("dual", "o2m")]


def calls(detector: DATEDetector, images: torch.Tensor, folder: Path, threads: int) -> dict:
    """{"torch": batch-1 predict, "onnx": the same in onnxruntime, the graph exported into ``folder``}."""
    h, w = images.shape[-2:]
    path = export(detector, folder / f"{detector.inference_branch}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy(), "image_sizes": torch.tensor([[h, w]]).numpy()}
    return {"torch": torch.no_grad()(lambda: detector.predict(images, [(h, w)])),
            "onnx": lambda: session.run(None, feed)}


def interleaved(fns: dict, warmup: int, iters: int) -> dict[str, float]:
    """Median ms per call of each of ``fns``, the calls taken in turn: on a shared machine a change of load
    then slows them all, not whichever ran during it."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def print_table(rows: list[dict], args: argparse.Namespace, size: tuple[int, int]) -> None:
    source = "checkpoints" if args.checkpoint else f"{args.backbone}-FPN, random init, {NUM_CLASSES} classes"
    print(f"\nBatch-1 CPU latency, {size[0]}x{size[1]}, {source}, {args.threads} thread(s), median of {args.iters} "
          f"(torch {torch.__version__}, onnxruntime {ort.__version__}):\n")
    print("| model | PyTorch ms | ONNX Runtime ms | PyTorch / ONNX Runtime |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['torch_ms']:.1f} | {r['onnx_ms']:.1f} | {r['torch_ms'] / r['onnx_ms']:.2f}x |")
    if len(rows) == 2:
        date, fcos = rows
        print(f"| DATE / FCOS latency | {date['torch_ms'] / fcos['torch_ms']:.2f}x | "
              f"{date['onnx_ms'] / fcos['onnx_ms']:.2f}x | |")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", help="a model_final.pth to time (repeatable); "
                        "default: random DATE and FCOS baseline detectors")
    parser.add_argument("--backbone", default="resnet50", help="without --checkpoint: resnet18 | resnet50 | ...")
    parser.add_argument("--size", default="512", help="HxW or S, multiples of 128 (the export's padding)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads of both")
    parser.add_argument("--iters", type=int, default=10, help="timed calls")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    if size[0] % 128 or size[1] % 128:
        parser.error(f"--size {args.size}: height and width must be multiples of 128 (the eval loader's padding)")
    torch.set_num_threads(args.threads)
    raw, _ = make_batch(1, size, torch.device("cpu"))
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images = (raw - mean) / std
    with tempfile.TemporaryDirectory() as folder:
        fns = {(d.inference_branch, runtime): fn for d in detectors(args)
               for runtime, fn in calls(d, images, Path(folder), args.threads).items()}
        ms = interleaved(fns, args.warmup, args.iters)
    rows = [{"name": NAMES[branch], "torch_ms": ms[branch, "torch"], "onnx_ms": ms[branch, "onnx"]}
            for branch in dict.fromkeys(branch for branch, _ in ms)]
    print_table(rows, args, size)
    return rows


if __name__ == "__main__":
    main()
