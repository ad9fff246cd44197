"""What a wider FPN and head cost in the main regime: training-step time at backbone.fpn_channels = 64 (the
default here), 128 and 256 (the paper's), on this machine, in one run.

    python experiments/head_width_cost.py --widths 64 128 256 --steps 10 --repeats 5 \
        --out experiments/results/head_width_cost

The regime is experiment=convergence_synthetic's (ResNet-18 FPN from scratch, DATE, 8 images of 128 px per
step, the synthetic benchmark's training batches in their order). Each repetition times ``--steps`` optimisation
steps (Trainer.step: forward, both branches' assignment and losses, backward, clipping, AdamW) per width, the
widths interleaved so that drift of a shared machine hits them alike; a ratio is the median of the
per-repetition ratios to the first width, with its range. Parameters are counted too. What the width does to
AP is the branch study's question (issue 23), not this script's.
Writes ``head_width_cost.md`` / ``.json`` (with the command and the commit) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, as the other recipes

from date.config import compose_config  # noqa: E402
from date.data.build import build_datasets  # noqa: E402
from date.data.loader import build_train_loader  # noqa: E402
from date.modeling.build import build_criterion, build_detector  # noqa: E402
from date.training.trainer import RunContext, Trainer  # noqa: E402


def trainer_for(width: int, overrides: list[str], workdir: Path) -> Trainer:
    cfg = compose_config(["experiment=convergence_synthetic", f"backbone.fpn_channels={width}", "num_workers=0",
                          *overrides])
    train_set, val_set = build_datasets(cfg.dataset)
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg, num_classes=train_set.num_classes)
    return Trainer(cfg, model=model, criterion=build_criterion(cfg), datasets=(train_set, val_set),
                   run=RunContext(workdir / str(width), torch.device("cpu")))


def seconds_per_step(trainer: Trainer, batches: list) -> float:
    start = time.perf_counter()
    for images, targets in batches:
        trainer.step(images, targets)
    return (time.perf_counter() - start) / len(batches)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per width and repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="more config overrides (key=value)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="head-width-"))
    trainers = {w: trainer_for(w, args.overrides, workdir) for w in args.widths}
    train_set = next(iter(trainers.values())).train_set
    loader = build_train_loader(train_set, batch_size=trainers[args.widths[0]].cfg.batch_size, seed=0, num_workers=0)
    batches = [b for _, b in zip(range(args.steps), loader)]
    for t in trainers.values():  # one untimed pass: allocator and oneDNN primitive caches
        seconds_per_step(t, batches[:2])
    times = {w: [] for w in args.widths}
    for _ in range(args.repeats):
        for w, t in trainers.items():
            times[w].append(seconds_per_step(t, batches))
    base = args.widths[0]
    rows = []
    for w in args.widths:
        ratios = [a / b for a, b in zip(times[w], times[base])]
        params = sum(p.numel() for p in trainers[w].model.parameters() if p.requires_grad)
        rows.append({"fpn_channels": w, "params_M": params / 1e6, "ms_per_step": 1e3 * statistics.median(times[w]),
                     "img_per_s": trainers[w].cfg.batch_size / statistics.median(times[w]),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    command = "python experiments/head_width_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# Head width: training-step time (commit {commit}, {torch.get_num_threads()} threads, "
             f"{torch.__version__})", "", f"`{command}`", "",
             f"ResNet-18 FPN, DATE, batch {trainers[base].cfg.batch_size} of 128 px (experiment=convergence_synthetic); "
             f"median of {args.repeats} repetitions of {args.steps} steps, widths interleaved.", "",
             f"| fpn_channels | parameters | ms / step | img/s | time vs {base} (median [min, max]) |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['fpn_channels']} | {r['params_M']:.2f} M | {r['ms_per_step']:.0f} | {r['img_per_s']:.1f} | "
              f"{r['ratio']:.2f}x [{r['ratio_min']:.2f}, {r['ratio_max']:.2f}] |" for r in rows]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "head_width_cost.md").write_text("\n".join(lines) + "\n")
        (args.out / "head_width_cost.json").write_text(json.dumps(
            {"command": command, "commit": commit, "rows": rows, "seconds": times}, indent=1) + "\n")


if __name__ == "__main__":
    main()
