"""Speed of the DATE detector against its peer, torchvision's FCOS, on the same device in one run.

    python -m date.bench --device cpu --size 256 --batch 4
    python -m date.bench --device cuda --size 800x1216 --batch 16 --amp --json bench.json

Measures (a) training-step img/s of DATE (dual, R50-FPN) and of torchvision's ``fcos_resnet50_fpn``
on the same images, batch and dtype; (b) batch-1 and batch-8 inference latency (DATE: o2o branch, no
NMS; torchvision FCOS: with its NMS; POTO, our detector with ``assigner=o2o``: DATE's inference must
cost what POTO's costs); (c) the share of DATE's training step spent in label assignment.
All models are randomly initialised; torchvision's internal resize is set to the input size so that
all see the same pixels.

The models' repetitions are interleaved (DATE, FCOS, POTO, DATE, ...) so that drift of a shared machine
(other jobs, clocks, thermals) hits them alike; a ratio is the median of the per-repetition paired ratios,
printed with its interquartile range, so that two runs can be compared within their spread (the model
columns are each model's median, so their quotient need not equal the paired ratio).
"""
import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.models.detection import fcos_resnet50_fpn

from date.config import compose_config
from date.modeling.build import build_criterion, build_detector

NUM_CLASSES = 80


@dataclass(frozen=True)
class Timing:
    """How every measurement runs: ``iters`` timed repetitions after ``warmup`` untimed ones, on ``device``,
    each call under ``autocast()`` (bf16 autocast with --amp, else a null context)."""

    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    warmup: int
    iters: int


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def make_batch(batch: int, size: tuple[int, int], device: torch.device, seed: int = 0):
    """Random images in [0, 1] and 1-13 random boxes per image."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.rand(batch, 3, h, w, generator=g)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 14, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = (torch.rand(n, 2, generator=g) * 0.5 + 0.05) * torch.tensor([w, h])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], dim=1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device),
                        "image_size": (h, w)})
    return images.to(device), targets


# DATE R50-FPN as `python -m date.train` composes it for COCO (its FCOS level ranges; no data is read)
OVERRIDES = ["backbone=resnet50", "assigner=dual", "dataset=coco"]


def build_date(device: torch.device, assigner: str = "dual"):
    """(detector on ``device``, criterion), from the same config as training; ``assigner=o2o`` gives POTO."""
    cfg = compose_config([o for o in OVERRIDES if not o.startswith("assigner=")] + [f"assigner={assigner}"])
    return build_detector(cfg, num_classes=NUM_CLASSES).to(device), build_criterion(cfg)


def build_tv_fcos(device: torch.device, size: tuple[int, int]) -> torch.nn.Module:
    return fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
                             min_size=min(size), max_size=max(size)).to(device)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def timed_interleaved(fns: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                      iters: int) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per call of each of ``fns``, called round-robin (A B C A B C ...) after ``warmup`` rounds, so that
    a slow spell of a shared machine hits every model of a repetition alike. Also each repetition's seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    repetitions = []
    for _ in range(iters):
        rep_start = time.perf_counter()
        for name, fn in fns.items():
            times[name].append(timed(fn, device, 0, 1)[0])
        repetitions.append(time.perf_counter() - rep_start)
    return times, repetitions


def paired_ratio(numerators: list[float], denominators: list[float]) -> dict[str, float]:
    """Median, quartiles and range of the per-repetition ratios ``numerators[i] / denominators[i]``: pairing
    cancels what a repetition shares (machine load), the spread says how far two runs may differ."""
    if not numerators or len(numerators) != len(denominators):
        raise ValueError(f"paired_ratio needs two equally long, non-empty lists of timings; got {len(numerators)} "
                         f"and {len(denominators)} (pass the times of one timed_interleaved call)")
    ratios = np.asarray(numerators, dtype=float) / np.asarray(denominators, dtype=float)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3),
            "min": float(ratios.min()), "max": float(ratios.max())}


def train_step_fn(model, images, targets, autocast, criterion=None):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    mean = torch.tensor([0.485, 0.456, 0.406], device=images.device)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], device=images.device)[:, None, None]
    normalised = (images - mean) / std  # DATE takes normalised tensors; torchvision FCOS normalises itself
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]

    def step():
        with autocast():
            if criterion is not None:  # DATE
                loss = criterion(*model(normalised), targets, 0.5).total
            else:
                loss = sum(model(list(images), tv_targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def infer_fn(model, images, autocast, is_date: bool):
    model.eval()
    h, w = images.shape[-2:]
    mean = torch.tensor([0.485, 0.456, 0.406], device=images.device)[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225], device=images.device)[:, None, None]
    normalised = (images - mean) / std

    @torch.no_grad()
    def run():
        with autocast():
            if is_date:
                model.predict(normalised, [(h, w)] * len(images))
            else:
                model(list(images))

    return run


@contextmanager
def assignment_timer(criterion, device: torch.device, totals: list[float]):
    """Time the criterion's assigner calls (synchronising around them) for the share measurement."""
    originals = dict(criterion.assigners)

    def timed_assigner(assign):
        def call(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            result = assign(*args, **kwargs)
            sync(device)
            totals.append(time.perf_counter() - start)
            return result
        return call

    criterion.assigners = {name: timed_assigner(a) for name, a in originals.items()}
    try:
        yield
    finally:
        criterion.assigners = originals


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default=None, help="HxW or S (default 800x1216 on GPU, 256 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 16 on GPU, 2 on CPU)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for both models")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed iterations (default 20 on GPU; 10 on CPU, enough for the paired ratios' IQR)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 5 on GPU, 1 on CPU)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    size = parse_size(args.size or ("800x1216" if gpu else "256"))
    batch = args.batch or (16 if gpu else 2)
    iters = args.iters or (20 if gpu else 10)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else nullcontext()

    timing = Timing(device, autocast, warmup, iters)
    torch.manual_seed(0)
    date_model, criterion = build_date(device)
    models = {"date": date_model, "tv_fcos": build_tv_fcos(device, size), "poto": build_date(device, "o2o")[0]}
    if args.channels_last:
        models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
    images, targets = make_batch(batch, size, device)
    results = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if gpu else "cpu",
               "size": list(size), "batch": batch, "amp_bf16": args.amp, "torch": torch.__version__,
               "repetitions": iters, "warmup": warmup, "repetition_s": {}, "ratio_spread": {}}
    measure_training(results, models, criterion, images, targets, timing)
    for b in (1, 8):
        measure_inference(results, models, images[:b] if b <= batch else images[:1].expand(b, -1, -1, -1).contiguous(),
                          timing)
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def measure_training(results: dict, models: dict, criterion, images, targets, timing: Timing):
    """DATE's and torchvision FCOS's training img/s (interleaved), their paired speedup, and the share of DATE's
    step spent in label assignment (timed apart: its synchronisation would slow the paired steps)."""
    steps = {name: train_step_fn(models[name], images, targets, timing.autocast,
                                 criterion=criterion if name == "date" else None) for name in ("date", "tv_fcos")}
    times, reps = timed_interleaved(steps, timing.device, timing.warmup, timing.iters)
    batch = len(images)
    for name, t in times.items():
        results[f"{name}_train_img_per_s"] = batch / statistics.median(t)
    spread = paired_ratio(times["tv_fcos"], times["date"])  # img/s ratio = inverse time ratio
    results["train_speedup"] = spread["median"]
    results["ratio_spread"]["train_speedup"] = spread
    results["repetition_s"]["train"] = reps
    totals: list[float] = []
    with assignment_timer(criterion, timing.device, totals):
        instrumented = timed(steps["date"], timing.device, 0, max(1, timing.iters // 2))
    results["assign_ms_per_step"] = 1e3 * sum(totals) / len(instrumented)
    results["assign_share"] = sum(totals) / sum(instrumented)


def measure_inference(results: dict, models: dict, images, timing: Timing):
    """Latency at ``len(images)`` of the three models (interleaved) and DATE's paired ratios to FCOS and to POTO."""
    b = len(images)
    fns = {name: infer_fn(model, images, timing.autocast, is_date=name != "tv_fcos") for name, model in models.items()}
    times, reps = timed_interleaved(fns, timing.device, timing.warmup, timing.iters)
    for name, t in times.items():
        results[f"{name}_infer_ms_b{b}"] = 1e3 * statistics.median(t)
    for key, peer in ((f"infer_latency_ratio_b{b}", "tv_fcos"), (f"infer_vs_poto_ratio_b{b}", "poto")):
        spread = paired_ratio(times["date"], times[peer])
        results[key] = spread["median"]
        results["ratio_spread"][key] = spread
    results["repetition_s"][f"infer_b{b}"] = reps


def format_ratio(spread: dict[str, float]) -> str:
    """``median [q1-q3]`` of a :func:`paired_ratio`."""
    return f"{spread['median']:.2f} [{spread['q1']:.2f}-{spread['q3']:.2f}]"


def print_table(r: dict):
    h, w = r["size"]
    print(f"\nDATE (dual, R50-FPN) vs torchvision fcos_resnet50_fpn and POTO (o2o, R50-FPN) on {r['device_name']}, "
          f"{h}x{w}, batch {r['batch']}, {'bf16' if r['amp_bf16'] else 'fp32'}")
    spread = r["ratio_spread"]
    rows = [("train img/s", r["date_train_img_per_s"], r["tv_fcos_train_img_per_s"], None,
             format_ratio(spread["train_speedup"]) + " x faster", "")]
    for b in (1, 8):
        rows.append((f"infer ms, batch {b}", r[f"date_infer_ms_b{b}"], r[f"tv_fcos_infer_ms_b{b}"],
                     r[f"poto_infer_ms_b{b}"], format_ratio(spread[f"infer_latency_ratio_b{b}"]) + " x latency",
                     format_ratio(spread[f"infer_vs_poto_ratio_b{b}"]) + " x latency"))
    print(f"{'metric':<20}{'DATE':>10}{'tv FCOS':>10}{'POTO':>10}   {'DATE/FCOS [IQR]':<28}{'DATE/POTO [IQR]'}")
    for name, ours, peer, poto, vs_peer, vs_poto in rows:
        poto_text = "-" if poto is None else f"{poto:.2f}"
        print(f"{name:<20}{ours:>10.2f}{peer:>10.2f}{poto_text:>10}   {vs_peer:<28}{vs_poto or '-'}")
    print(f"assignment: {r['assign_ms_per_step']:.1f} ms per step = {100 * r['assign_share']:.1f}% "
          "of DATE's training step")
    durations = "; ".join(f"{k} " + ", ".join(f"{s:.2f}" for s in v) for k, v in r["repetition_s"].items())
    print(f"{r['repetitions']} interleaved repetitions after {r['warmup']} warm-up, seconds each: {durations}")


if __name__ == "__main__":
    main()
