"""The duplicate count of analysis.duplicates on a hand-made image and against a brute-force count, and its
``--show`` figure on real smoke trainings of FCOS and DATE (counts in the titles recounted by brute force)."""
import json
import random
import re
import shutil

import pytest
import torch
from torchvision.ops import batched_nms

from analysis import duplicate_sites, duplicates
from analysis.duplicates import MatchCounts, count_duplicates, variant_of
from analysis.duplicates_figure import draw_figure
from conftest import SMOKE, run_in_process, sandbox_env
from date.data.build import build_val_dataset
from date.data.loader import build_eval_loader
from date.modeling.build import checkpoint_config, detector_from_checkpoint


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_hand_made_image():
    # A and B (class 0) side by side, overlapping; C (class 1) far away.
    gt_boxes = _t([[0, 0, 40, 40], [30, 0, 70, 40], [100, 100, 140, 140]])
    gt_labels = torch.tensor([0, 0, 1])
    dets = [  # (box, score, label, what it is)
        ([0, 0, 40, 40], 0.95, 0, "TP on A"),
        ([2, 0, 42, 40], 0.90, 0, "A again (IoU 0.90); B is free but overlaps it only 0.18: a duplicate"),
        ([1, 1, 41, 41], 0.85, 1, "on A with the wrong class: a false positive, not a duplicate"),
        ([30, 0, 70, 40], 0.80, 0, "TP on B"),
        ([29, 0, 69, 40], 0.70, 0, "B again: duplicate"),
        ([100, 100, 115, 115], 0.60, 1, "on C with IoU 0.14: false positive"),
        ([100, 100, 140, 140], 0.50, 1, "TP on C"),
        ([101, 100, 141, 140], 0.40, 1, "C again: duplicate"),
    ]
    shuffled = random.Random(0).sample(dets, len(dets))  # the count sorts by score itself
    counts = count_duplicates(_t([d[0] for d in shuffled]), torch.tensor([d[1] for d in shuffled]),
                              torch.tensor([d[2] for d in shuffled]), gt_boxes, gt_labels)
    assert counts == MatchCounts(detections=8, true_positives=3, duplicates=3)
    assert counts.rate == 3 / 8


def test_a_detection_that_can_still_take_a_free_object_is_not_a_duplicate():
    gt_boxes, gt_labels = _t([[0, 0, 40, 40], [10, 0, 50, 40]]), torch.tensor([0, 0])  # IoU(A, B) = 0.6
    boxes = _t([[0, 0, 40, 40], [5, 0, 45, 40]])  # the second overlaps A (taken) and B (free) >= 0.5
    counts = count_duplicates(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), gt_boxes, gt_labels)
    assert counts == MatchCounts(2, 2, 0)


def test_no_detections_or_no_objects():
    empty = torch.zeros(0, 4)
    assert count_duplicates(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), _t([[0, 0, 9, 9]]),
                            torch.tensor([0])) == MatchCounts(0, 0, 0)
    assert count_duplicates(_t([[0, 0, 9, 9]]), torch.tensor([0.5]), torch.tensor([0]), empty,
                            torch.zeros(0, dtype=torch.long)) == MatchCounts(1, 0, 0)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _brute_force(dets, gts):
    """Plain Python: detections by descending score; each takes the best free same-class object at IoU >= 0.5,
    else counts as a duplicate when it hits a taken one."""
    taken, tp, dup = set(), 0, 0
    for box, _, label in sorted(dets, key=lambda d: -d[1]):
        hits = [(_iou(box, g), j) for j, (g, gl) in enumerate(gts) if gl == label and _iou(box, g) >= 0.5]
        free = [h for h in hits if h[1] not in taken]
        if free:
            taken.add(max(free)[1])
            tp += 1
        elif hits:
            dup += 1
    return tp, dup


def test_matches_a_brute_force_count_on_random_crowded_images():
    rng = random.Random(1)
    for _ in range(30):
        gts = []
        for _ in range(rng.randint(1, 6)):
            x, y, w, h = rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(10, 40), rng.uniform(10, 40)
            gts.append(([x, y, x + w, y + h], rng.randint(0, 1)))
        dets = []
        for _ in range(rng.randint(0, 25)):  # jittered copies of objects: many near-duplicates
            (g, label) = rng.choice(gts)
            j = [rng.gauss(0, 3) for _ in range(4)]
            box = [g[0] + j[0], g[1] + j[1], max(g[2] + j[2], g[0] + j[0] + 1), max(g[3] + j[3], g[1] + j[1] + 1)]
            dets.append((box, rng.random(), label if rng.random() < 0.85 else 1 - label))
        counts = count_duplicates(_t([d[0] for d in dets]).reshape(-1, 4), torch.tensor([d[1] for d in dets]),
                                  torch.tensor([d[2] for d in dets], dtype=torch.long), _t([g for g, _ in gts]),
                                  torch.tensor([l for _, l in gts]))
        assert (counts.true_positives, counts.duplicates) == _brute_force(dets, gts)
        assert counts.detections == len(dets)


def test_variant_of_a_checkpoint_config():
    assert variant_of({"assigner": {"mode": "dual", "o2m": "topk"}}) == "dual_topk"
    assert variant_of({"assigner": {"mode": "dual", "o2m": "fcos"}}) == "dual"
    assert variant_of({"assigner": {"mode": "o2m", "o2m": "fcos"}}) == "o2m"


# ---------------------------------------------------------------- --show: the figure, on real tiny trainings

# lr as in test_analysis_cli: boxes that overlap objects. Seed 3: with the paired head init (e8a4835) the smoke FCOS
# of seeds 0-2 barely hits an object on the 4 val images (0.0-0.5% duplicates of 400 detections), seed 3's does (1.8%)
TRAIN = [*SMOKE, "optim.lr=0.02", "eval_every=2", "seed=3"]
TITLE = re.compile(r"^(.+): (\d+) dets, (\d+) dup$")


# The tests reading `trained` share one xdist worker, so that its sweep runs once.
ON_TRAINED_WORKER = pytest.mark.xdist_group("duplicates_trained")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    """An FCOS (o2m) and a DATE (dual) smoke training: {variant: model_final.pth}."""
    root = tmp_path_factory.mktemp("duplicates")
    env = sandbox_env(root, data_cache)
    result = run_in_process("date.train", ["-m", "assigner=o2m,dual", *TRAIN, f"hydra.sweep.dir={root / 'sweep'}"],
                            env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = {variant: sorted((root / "sweep").glob(f"assigner-{variant}_*/model_final.pth"))
                   for variant in ("o2m", "dual")}
    assert all(len(paths) == 1 for paths in checkpoints.values()), checkpoints
    yield {variant: paths[0] for variant, paths in checkpoints.items()}
    shutil.rmtree(root, ignore_errors=True)


def _recounted(checkpoint, score_thresh=None):
    """Per val image (loader order): (dets, dup) of the raw, the NMS'd detections scoring above ``score_thresh``
    (default: every detection), by the plain-Python greedy matching, from the model run here."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    val_set = build_val_dataset(checkpoint_config(saved).dataset)
    model = detector_from_checkpoint(saved, num_classes=val_set.num_classes).eval()
    nms_thresh = saved["config"]["model"]["nms_thresh"]
    out = []
    for images, targets in build_eval_loader(val_set, batch_size=8, num_workers=0):
        with torch.no_grad():
            raw = model.predict(images, [tuple(t["image_size"]) for t in targets], nms=False)
        for p, t in zip(raw, targets):
            after = {k: v[batched_nms(p["boxes"], p["scores"], p["labels"], nms_thresh)] for k, v in p.items()}
            gts = list(zip(t["boxes"].tolist(), t["labels"].tolist()))
            counts = []
            for d in (p, after):
                dets = [(b, s, l) for b, s, l in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())
                        if score_thresh is None or s > score_thresh]
                counts.append((len(dets), _brute_force(dets, gts)[1]))
            out.append(counts)
    return out


def _figure(trained, score_thresh=None, count=4):
    device = torch.device("cpu")
    val_sets = duplicates.ValSets()
    fcos, date = (duplicates.load_checkpoint(trained[v], device=device, val_sets=val_sets) for v in ("o2m", "dual"))
    shown = duplicates.collect_shown(fcos, date, count, device=device, batch_size=8, num_workers=0,
                                     score_thresh=score_thresh)
    return draw_figure(shown, caption=duplicates.show_caption(fcos, date, score_thresh))


def _titles(fig):
    """[[(name, dets, dup) per detection panel] per row] and the ground-truth titles, from the axes."""
    axes = fig.get_axes()
    rows = [axes[i:i + 4] for i in range(0, len(axes), 4)]
    return ([[(m.group(1), int(m.group(2)), int(m.group(3))) for m in (TITLE.match(a.get_title()) for a in r[:3])]
             for r in rows], [r[3].get_title() for r in rows])


@pytest.mark.slow
@ON_TRAINED_WORKER
def test_show_writes_a_png_and_pdf_whose_counts_are_the_rates(trained, tmp_path, capsys, one_thread):
    out = tmp_path / "dup"
    rows = duplicates.main(["--checkpoint", str(trained["o2m"]), str(trained["dual"]), "--out", str(out),
                            "--show", "4"])
    assert (out / "duplicates_show.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (out / "duplicates_show.pdf").read_bytes().startswith(b"%PDF")
    assert f"(FCOS: {trained['o2m']}, DATE: {trained['dual']})" in capsys.readouterr().out
    fig = _figure(trained)
    assert len(fig.get_axes()) == 4 * 4
    titles, gt_titles = _titles(fig)
    fcos, date = _recounted(trained["o2m"]), _recounted(trained["dual"])
    for row, f, d, gt in zip(titles, fcos, date, gt_titles):
        assert [name for name, _, _ in row] == ["FCOS, no NMS", "FCOS, NMS", "DATE, no NMS"]
        assert [(n, u) for _, n, u in row] == [f[0], f[1], d[0]]
        assert re.fullmatch(r"ground truth \(image \d+\): \d+ objects", gt)
    # all 4 val images shown at the rate's own threshold: the panels add up to the rate's detections and duplicates
    by_variant = {r.variant: r for r in rows}
    for column, (row, key) in enumerate(((by_variant["o2m"], "raw"), (by_variant["o2m"], "nms"),
                                         (by_variant["dual"], "raw"))):
        dets = sum(r[column][1] for r in titles)
        dups = sum(r[column][2] for r in titles)
        assert dets == getattr(row, f"detections_{key}")
        assert dups == round(getattr(row, f"duplicate_rate_{key}") * dets)
    assert sum(r[0][2] for r in titles) > 0, "FCOS without NMS fires more than once on some object"
    assert sum(r[0][2] for r in titles) >= sum(r[1][2] for r in titles)  # NMS never adds a duplicate


@pytest.mark.slow
@ON_TRAINED_WORKER
def test_show_score_draws_only_the_detections_above_it(trained, one_thread):
    scores = sorted(s for image in _recounted_scores(trained["o2m"]) for s in image)
    thresh = scores[len(scores) // 2]  # half of FCOS's raw detections are drawn
    fig = _figure(trained, score_thresh=thresh, count=2)
    assert len(fig.get_axes()) == 4 * 2
    assert f"Detections scoring > {max(thresh, 0.01):g}" in fig.get_suptitle()
    titles, _ = _titles(fig)
    fcos, date = _recounted(trained["o2m"], thresh), _recounted(trained["dual"], thresh)
    for row, f, d in zip(titles, fcos, date):
        assert [(n, u) for _, n, u in row] == [f[0], f[1], d[0]]
    everything = _recounted(trained["o2m"])
    assert 0 < sum(r[0][1] for r in titles) < sum(f[0][0] for f in everything[:2])


def _recounted_scores(checkpoint):
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    val_set = build_val_dataset(checkpoint_config(saved).dataset)
    model = detector_from_checkpoint(saved, num_classes=val_set.num_classes).eval()
    images, targets = next(iter(build_eval_loader(val_set, batch_size=2, num_workers=0)))
    with torch.no_grad():
        return [p["scores"].tolist() for p in model.predict(images, [tuple(t["image_size"]) for t in targets],
                                                              nms=False)]


@pytest.mark.slow
@ON_TRAINED_WORKER
def test_show_refuses_a_count_it_cannot_draw(trained, tmp_path, capsys, one_thread):
    both = ["--checkpoint", str(trained["o2m"]), str(trained["dual"]), "--out", str(tmp_path / "dup")]
    with pytest.raises(SystemExit) as exit_info:
        duplicates.main([*both, "--show", "0"])
    assert exit_info.value.code == 2
    assert "--show 0: expected the number of validation images to draw, >= 1 (e.g. --show 4)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        duplicates.main([*both, "--show", "5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"Error: --show 5: the validation split \S+ has 4 images\. Ask for between 1 and 4 images\.\n$",
                     err), err
    assert not (tmp_path / "dup" / "duplicates_show.png").exists()
    with pytest.raises(SystemExit) as exit_info:
        duplicates.main(["--checkpoint", str(trained["o2m"]), "--out", str(tmp_path / "dup"), "--show", "1"])
    assert exit_info.value.code == 2
    assert f"no --checkpoint is a DATE one (their assigners: {trained['o2m']}: o2m)" in capsys.readouterr().err


@pytest.mark.slow
@ON_TRAINED_WORKER
def test_duplicate_sites_places_every_duplicate_that_the_rate_counts(trained, tmp_path, one_thread):
    """analysis.duplicate_sites on the smoke DATE: as many detections and duplicates as analysis.duplicates counts,
    each placed in one level-difference class, and its report written."""
    row = duplicates.analyse_checkpoint(trained["dual"], device=torch.device("cpu"), batch_size=2, num_workers=0)
    duplicate_sites.main(["--checkpoint", str(trained["dual"]), "--out", str(tmp_path / "sites"), "--batch-size", "2"])
    [sites] = json.loads((tmp_path / "sites" / "duplicate_sites.json").read_text())["checkpoints"]
    assert sites["detections"] == row.detections_raw
    assert sites["duplicates"] == round(row.duplicate_rate_raw * row.detections_raw)
    assert sites["duplicates"] > 0 and sum(sites["level_diff"]) == sites["duplicates"] and sites["variant"] == "dual"
    assert sum(sites["distance"]) == sites["level_diff"][0] + sites["level_diff"][1] >= sites["within_reach"]
    assert "within 3DMF's reach" in (tmp_path / "sites" / "duplicate_sites.md").read_text()
