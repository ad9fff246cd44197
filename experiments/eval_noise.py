"""How much of a final AP is evaluation noise? An image-level bootstrap of one checkpoint's val AP.

    python experiments/eval_noise.py --run-dir outputs/date/defaults --sizes 96 250 1000 --resamples 500 \
        --out experiments/results/eval_noise

Reads the run's final detections (``detections_val.json``, written by date.train at its last evaluation, on
the whole val split) and the val annotations of the run's dataset. For each size n it takes the first n val
images (the synthetic generator draws images independently: a random sample of the benchmark) and resamples
n images with replacement, ``--resamples`` times, scoring each resample with pycocotools' COCOeval. The
spread of those APs is the evaluation noise a final AP on n images carries on top of the training noise
between seeds.

COCOeval's per-image matching does not depend on the other images, so it runs once on all images; each
resample only re-accumulates the per-image results in the resampled order (duplicates included).
Writes ``eval_noise.md`` / ``eval_noise.json`` (with the command and the commit) to ``--out``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, as the other recipes

from date.data.build import build_val_dataset  # noqa: E402
from date.modeling.build import checkpoint_config  # noqa: E402


def evaluated(coco_gt: COCO, detections: list[dict], image_ids: list[int]) -> COCOeval:
    """COCOeval with ``evaluate()`` done on ``image_ids`` (per-image matching, once)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
    return ev


def resampled_ap(ev: COCOeval, positions: np.ndarray) -> float:
    """AP of the images at ``positions`` (indices into the evaluated, sorted image ids; repeats allowed)."""
    image_ids = ev._paramsEval.imgIds
    images = len(image_ids)
    areas = len(ev._paramsEval.areaRng)
    cats = len(ev._paramsEval.catIds)
    full = ev.evalImgs
    # evalImgs is laid out [category][area range][image]; keep that layout over the resampled images
    ev.evalImgs = [full[k * areas * images + a * images + i] for k in range(cats) for a in range(areas)
                   for i in positions]
    ev._paramsEval.imgIds = ev.params.imgIds = list(range(len(positions)))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[0])
    finally:
        ev.evalImgs, ev._paramsEval.imgIds, ev.params.imgIds = full, image_ids, list(image_ids)


def bootstrap(coco_gt: COCO, detections: list[dict], image_ids: list[int], *, resamples: int,
              seed: int) -> dict:
    """The AP of ``image_ids`` and its bootstrap distribution over ``resamples`` image resamples."""
    wanted = set(image_ids)
    ev = evaluated(coco_gt, [d for d in detections if d["image_id"] in wanted], image_ids)
    rng = np.random.default_rng(seed)
    n = len(image_ids)
    ap = resampled_ap(ev, np.arange(n))
    aps = np.array([resampled_ap(ev, rng.integers(0, n, size=n)) for _ in range(resamples)])
    low, high = np.percentile(aps, [2.5, 97.5])
    return {"images": n, "objects": len(coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False)), "AP": ap,
            "bootstrap_sd": float(aps.std(ddof=1)), "interval_95": [float(low), float(high)],
            "resamples": resamples}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished date.train run dir")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 250, 1000], help="val images per estimate")
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    detections_file, checkpoint = args.run_dir / "detections_val.json", args.run_dir / "model_final.pth"
    for path in (detections_file, checkpoint):
        if not path.is_file():
            parser.error(f"{path} does not exist: --run-dir must be a finished date.train run dir")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    val_set = build_val_dataset(checkpoint_config(saved).dataset)
    coco_gt = val_set.coco
    all_ids = sorted(coco_gt.getImgIds())
    if max(args.sizes) > len(all_ids):
        parser.error(f"--sizes {max(args.sizes)} > the {len(all_ids)} images of the val split")
    detections = json.loads(detections_file.read_text())
    rows = [bootstrap(coco_gt, detections, all_ids[:n], resamples=args.resamples, seed=args.seed)
            for n in args.sizes]
    command = "python experiments/eval_noise.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "commit": commit(), "run_dir": str(args.run_dir),
              "assigner": saved["config"]["assigner"]["mode"], "seed": saved["config"]["seed"], "rows": rows}
    lines = ["# Evaluation noise of the final val AP (image-level bootstrap)", "",
             f"`{command}` at commit {result['commit']}; checkpoint: assigner {result['assigner']}, seed "
             f"{result['seed']}. AP in points (x100); the first n val images, {args.resamples} resamples each.", "",
             "| val images | objects | AP | bootstrap sd | 95% interval |", "| ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['images']} | {r['objects']} | {100 * r['AP']:.2f} | {100 * r['bootstrap_sd']:.2f} | "
              f"{100 * r['interval_95'][0]:.2f} - {100 * r['interval_95'][1]:.2f} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_noise.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "eval_noise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
