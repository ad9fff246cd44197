"""Where a one-to-one detector's duplicates lie, and whether DeFCN's 3D max filtering (3DMF) can reach them.

    python -m analysis.duplicate_sites --checkpoint RUN/model_final.pth [RUN2/model_final.pth ...] --out DIR

For each checkpoint, its raw top ``detections_per_img`` (no NMS, as analysis.duplicates) on the val split, matched
greedily at IoU 0.5 (analysis.duplicates.match_to_ground_truth). Each duplicate is compared with its *taker*, the
detection that took the object it repeats: the FPN levels they were read from (date.modeling.decode gives each
detection its location) and the distance between their location points, in strides of the duplicate's level.

3DMF (``model.use_3dmf``) multiplies a location's o2o score by a learned factor computed through a 3x3 max over
its own level and the two adjacent ones (resampled to its size): a duplicate is *within reach* when its level is the
taker's or adjacent to it and the taker's point lies within one cell of it (Chebyshev distance <= 1.5 strides of
the duplicate's level: one cell, plus half a cell for a point of another level's grid). Writes
``duplicate_sites.json`` and ``duplicate_sites.md`` (per checkpoint and per variant: the duplicates by level
difference, by distance, and the share within reach), with the command and the commit.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from analysis.duplicates import DUPLICATE, TRUE_POSITIVE, ValSets, load_checkpoint, match_to_ground_truth, variant_of
from analysis.stats import paired_t, summarize
from date.data.loader import build_eval_loader
from date.inference import run_branches
from date.modeling.decode import location_points
from date.runtime.distributed import resolve_device

REACH = 1.5  # strides of the duplicate's level: 3DMF's 3x3 window (see the module docstring)
DISTANCE_BINS = (1.5, 3.0)  # <= 1.5 (within one cell), (1.5, 3], > 3 strides


@dataclass
class SiteCounts:
    """One checkpoint's duplicates by where they lie against their takers."""

    checkpoint: str
    variant: str
    seed: str
    detections: int
    duplicates: int
    level_diff: list[int]  # duplicates whose level is the taker's, one apart, two or more apart
    distance: list[int]  # of those on the same or an adjacent level: <= 1.5, (1.5, 3], > 3 strides
    within_reach: int  # same or adjacent level and <= REACH strides
    score_ratio_median: float  # a duplicate's score over its taker's (3DMF's job is to make it small)
    strong: int  # duplicates scoring at least half their taker's

    @property
    def reach_share(self) -> float:
        return self.within_reach / self.duplicates if self.duplicates else float("nan")


def location_grid(image_shape: tuple[int, int], strides: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(points [N, 2], level [N]) of a padded batch of ``image_shape`` (H, W), as the detector's forward lays its
    locations out: level l has ceil(H / s_l) x ceil(W / s_l) of them, P3 first."""
    shapes = [(math.ceil(image_shape[0] / s), math.ceil(image_shape[1] / s)) for s in strides]
    points = location_points([torch.empty(0, 0, h, w) for h, w in shapes], tuple(strides))
    level = torch.cat([torch.full((h * w,), i, dtype=torch.long) for i, (h, w) in enumerate(shapes)])
    return points, level


def duplicate_sites(detections: dict[str, Tensor], target: dict, points: Tensor, level: Tensor,
                    strides: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """For each duplicate of one image: (level difference to its taker [D] int64, Chebyshev distance between their
    points in strides of the duplicate's level [D], its score over the taker's [D])."""
    outcome, gt = match_to_ground_truth(detections["boxes"], detections["scores"], detections["labels"],
                                        target["boxes"], target["labels"])
    dups = torch.where(outcome == DUPLICATE)[0]
    if len(dups) == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0)
    taker_of = {int(g): i for i, g in enumerate(gt.tolist()) if outcome[i] == TRUE_POSITIVE}
    takers = torch.tensor([taker_of[int(gt[d])] for d in dups])
    at_dup, at_taker = detections["locations"][dups], detections["locations"][takers]
    diff = (level[at_dup] - level[at_taker]).abs()
    stride = torch.tensor(strides, dtype=torch.float)[level[at_dup]]
    distance = (points[at_dup] - points[at_taker]).abs().max(dim=1).values / stride
    return diff, distance, detections["scores"][dups] / detections["scores"][takers]


@torch.no_grad()
def analyse_checkpoint(path: Path, *, device: torch.device, batch_size: int, num_workers: int,
                       val_sets: ValSets) -> SiteCounts:
    loaded = load_checkpoint(path, device=device, val_sets=val_sets)
    strides = loaded.model.strides
    diffs, distances, ratios, detections = [], [], [], 0
    for images, targets in build_eval_loader(loaded.val_set, batch_size=batch_size, num_workers=num_workers):
        points, level = location_grid(tuple(images.shape[-2:]), strides)
        [raw] = run_branches(loaded.model, images, [t["image_size"] for t in targets], device=device, nms=False)
        for found, target in zip(raw, targets):
            found = {k: v.cpu() for k, v in found.items()}
            diff, distance, ratio = duplicate_sites(found, target, points, level, strides)
            diffs.append(diff)
            distances.append(distance)
            ratios.append(ratio)
            detections += len(found["scores"])
    diff, distance, ratio = torch.cat(diffs), torch.cat(distances), torch.cat(ratios)
    near_level = diff <= 1
    bins = torch.bucketize(distance[near_level], torch.tensor(DISTANCE_BINS))  # 0: <= 1.5, 1: (1.5, 3], 2: > 3
    config = loaded.config
    return SiteCounts(checkpoint=str(path), variant=variant_of(config) + ("+3dmf" if config["model"]["use_3dmf"] else ""),
                      seed=str(config.get("seed", "?")), detections=detections, duplicates=len(diff),
                      level_diff=[int((diff == 0).sum()), int((diff == 1).sum()), int((diff >= 2).sum())],
                      distance=[int((bins == b).sum()) for b in range(3)],
                      within_reach=int((near_level & (distance <= REACH)).sum()),
                      score_ratio_median=float(ratio.median()) if len(ratio) else float("nan"),
                      strong=int((ratio >= 0.5).sum()))


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip() or "unknown"


def report(rows: Sequence[SiteCounts], command: str) -> tuple[str, dict]:
    """The markdown table (per checkpoint, then per variant: mean ± sd over checkpoints) and the JSON."""
    def shares(counts: list[int], total: int) -> str:
        return " | ".join(f"{n / total:.1%}" if total else "–" for n in counts)

    lines = ["# Where the duplicates lie: level and distance to the detection that took the object", "",
             f"`{command}` at commit {_commit()}. Raw top-100 detections (no NMS) on the val split; shares of the "
             f"duplicates; distance in strides of the duplicate's level, for those on the taker's level or an adjacent "
             f"one; within 3DMF's reach: same or adjacent level and <= {REACH} strides.", "",
             "| checkpoint | variant | seed | duplicates / detections | same level | 1 level apart | 2+ apart | "
             "<= 1.5 strides | 1.5-3 | > 3 | within 3DMF's reach | score / taker's (median) | scoring >= half the "
             "taker's |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.checkpoint} | {r.variant} | {r.seed} | {r.duplicates} / {r.detections} | "
                     f"{shares(r.level_diff, r.duplicates)} | {shares(r.distance, sum(r.distance))} | "
                     f"{r.reach_share:.1%} | {r.score_ratio_median:.2f} | {r.strong / max(r.duplicates, 1):.1%} |")
    by_variant = defaultdict(list)
    for r in rows:
        by_variant[r.variant].append(r)
    lines += ["", "| variant | checkpoints | duplicate rate | same level | within 3DMF's reach | score / taker's "
              "(median) | scoring >= half the taker's |", "|---|---|---|---|---|---|---|"]
    summary = {}
    for variant, group in by_variant.items():
        rate = summarize([r.duplicates / r.detections for r in group])
        same = summarize([r.level_diff[0] / r.duplicates for r in group if r.duplicates])
        reach = summarize([r.reach_share for r in group if r.duplicates])
        ratio = summarize([r.score_ratio_median for r in group if r.duplicates])
        strong = summarize([r.strong / r.duplicates for r in group if r.duplicates])
        summary[variant] = {"checkpoints": len(group), "duplicate_rate": asdict(rate), "same_level": asdict(same),
                            "within_reach": asdict(reach), "score_ratio_median": asdict(ratio),
                            "strong": asdict(strong)}
        lines.append(f"| {variant} | {len(group)} | {_mean_sd(rate)} | {_mean_sd(same)} | {_mean_sd(reach)} | "
                     f"{ratio.mean:.2f}" + ("" if ratio.std is None else f" ± {ratio.std:.2f}") +
                     f" | {_mean_sd(strong)} |")
    changes = three_dmf_changes(by_variant)
    if changes:
        lines += ["", "3DMF's change, paired by seed (variant+3dmf − variant; mean [95% t-interval], p):", "",
                  "| variant | seeds | within 3DMF's reach | score / taker's (median) | scoring >= half the taker's |",
                  "|---|---|---|---|---|"]
        for variant, change in changes.items():
            lines.append(f"| {variant} | {change['seeds']} | " + " | ".join(
                _delta(change[key], scale) for key, scale in (("reach_share", 100), ("score_ratio_median", 1),
                                                               ("strong_share", 100))) + " |")
    return "\n".join(lines) + "\n", {"command": command, "commit": _commit(), "reach_strides": REACH,
                                     "distance_bins": DISTANCE_BINS, "checkpoints": [asdict(r) for r in rows],
                                     "variants": summary, "three_dmf_changes": changes}


def three_dmf_changes(by_variant: dict[str, list[SiteCounts]]) -> dict[str, dict]:
    """For each variant run with and without 3DMF on the same seeds: the paired change of the share within reach,
    the median score ratio and the share of strong duplicates (analysis.stats.paired_t)."""
    changes = {}
    for variant, group in by_variant.items():
        filtered = {r.seed: r for r in by_variant.get(variant + "+3dmf", [])}
        plain = {r.seed: r for r in group}
        seeds = sorted(set(filtered) & set(plain))
        if variant.endswith("+3dmf") or len(seeds) < 2:
            continue
        measures = {"reach_share": lambda r: r.reach_share, "score_ratio_median": lambda r: r.score_ratio_median,
                    "strong_share": lambda r: r.strong / r.duplicates}
        changes[variant] = {"seeds": len(seeds), **{
            key: asdict(paired_t([f(filtered[s]) for s in seeds], [f(plain[s]) for s in seeds]))
            for key, f in measures.items()}}
    return changes


def _delta(c: dict, scale: float) -> str:
    unit = " pt" if scale == 100 else ""
    return (f"{scale * c['delta']:+.2f}{unit} [{scale * c['ci'][0]:+.2f}, {scale * c['ci'][1]:+.2f}], "
            f"p {c['p']:.2g}")


def _mean_sd(s) -> str:
    return f"{s.mean:.1%}" if s.std is None else f"{s.mean:.1%} ± {s.std:.1%}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for path in args.checkpoint:
        if not path.is_file():
            sys.exit(f"--checkpoint {path}: no such file (a model_final.pth or last.pth of date.train)")
    device, val_sets = resolve_device(args.device), ValSets()
    rows = []
    for path in args.checkpoint:
        rows.append(analyse_checkpoint(path, device=device, batch_size=args.batch_size,
                                       num_workers=args.num_workers, val_sets=val_sets))
        print(f"{path}: {rows[-1].duplicates} duplicates, {rows[-1].reach_share:.1%} within 3DMF's reach", flush=True)
    command = "python -m analysis.duplicate_sites --checkpoint " + " ".join(map(str, args.checkpoint)) + \
        f" --out {args.out}"
    text, data = report(rows, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "duplicate_sites.md").write_text(text)
    (args.out / "duplicate_sites.json").write_text(json.dumps(data, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
