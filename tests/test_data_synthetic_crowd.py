"""dataset=synthetic_crowd: crowd scenes written in CrowdHuman's odgt layout, read by the CrowdHuman loader; the
people, their occlusion and boxes checked against a brute-force redraw; the statistics against a brute-force count."""

from __future__ import annotations

import hashlib
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from conftest import run_in_process
from date.config import compose_config
from date.data.build import build_datasets, synthetic_params
from date.data.crowdhuman import CrowdHumanDetection
from date.data.errors import DatasetError
from date.data.odgt import read_ground_truth
from date.data.synthetic import SyntheticParams, describe, ensure_synthetic
from date.data.synthetic.crowd import MAX_ASPECT, MIN_ASPECT, person_mask

SMALL = ["num_train=12", "num_val=4"]


def _params(tmp_path: Path, *overrides: str) -> SyntheticParams:
    cfg = compose_config(["dataset=synthetic_crowd", f"dataset.cache_dir={tmp_path}",
                          *(f"dataset.{o}" for o in [*SMALL, *overrides])]).dataset
    return synthetic_params(cfg)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _iou(a, b) -> float:  # [x, y, w, h]
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_the_preset_is_read_by_the_crowdhuman_loader(tmp_path):
    cfg = compose_config(["dataset=synthetic_crowd", f"dataset.cache_dir={tmp_path}",
                          *(f"dataset.{o}" for o in SMALL)]).dataset
    train, val = build_datasets(cfg)
    assert isinstance(train, CrowdHumanDetection) and isinstance(val, CrowdHumanDetection)
    assert (len(train), len(val)) == (12, 4) and train.num_classes == 1
    root = Path(train.ann_file).parent
    assert root.name.startswith("crowd-") and {p.name for p in root.iterdir()} >= {
        "annotation_train.odgt", "annotation_val.odgt", "Images", "params.json"}
    assert sorted(p.name for p in (root / "Images").iterdir())[:2] == ["train-000000.jpg", "train-000001.jpg"]
    assert train.crowdhuman_ids[0] == "train-000000" and len(val.crowd_gt) == 4
    image, target = train[0]
    assert image.shape[0] == 3 and (target["boxes"][:, 2:] <= 128).all()  # fboxes clipped for training


def test_people_are_amodal_full_bodies_that_keep_min_visible(tmp_path):
    """Redraw every image's people from their fboxes, far to near (feet row), as masks: each keeps min_visible of
    its in-image pixels, its vbox is the tight box of them, and its fbox has a pedestrian's aspect."""
    params = _params(tmp_path)
    root = ensure_synthetic(params, cache_dir=tmp_path, progress=False)
    S, cut, tags = params.image_size, 0, {"person": 0, "mask": 0}
    for record in _lines(root / "annotation_train.odgt") + _lines(root / "annotation_val.odgt"):
        assert (record["height"], record["width"]) == (S, S)
        people = [b for b in record["gtboxes"] if b["tag"] == "person"]
        for box in record["gtboxes"]:
            tags[box["tag"]] += 1
            assert set(box) >= {"tag", "fbox", "vbox", "hbox", "extra"}
            assert box["extra"].get("ignore", 0) == (box["tag"] == "mask")
        owner = np.full((S, S), -1)
        for k, box in sorted(enumerate(people), key=lambda kb: kb[1]["fbox"][1] + kb[1]["fbox"][3]):
            x, y, w, h = box["fbox"]
            assert MIN_ASPECT - 0.05 <= w / h <= MAX_ASPECT + 0.05, box
            canvas = np.zeros((S + 2 * h, S + 2 * w), bool)  # room for the parts outside the image
            canvas[y + h : y + 2 * h, x + w : x + 2 * w] = person_mask(h, w)[0]
            owner[canvas[h : h + S, w : w + S]] = k
            cut += x < 0 or y < 0 or x + w > S or y + h > S
        for k, box in enumerate(people):
            x, y, w, h = box["fbox"]
            full = np.zeros((S + 2 * h, S + 2 * w), bool)
            full[y + h : y + 2 * h, x + w : x + 2 * w] = person_mask(h, w)[0]
            inside = full[h : h + S, w : w + S].sum()
            rows, cols = np.nonzero(owner == k)
            assert len(rows) >= params.min_visible * inside, (record["ID"], box)
            assert box["vbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
    assert cut > 0 and tags["person"] > 10 * 16 * 0.3 and 0 < tags["mask"] < tags["person"]


def test_generation_is_byte_identical_with_workers_and_keys_differ_by_scene(tmp_path):
    params = _params(tmp_path, "num_train=4", "num_val=2")

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    a = digest(ensure_synthetic(params, cache_dir=tmp_path / "a", progress=False))
    b = digest(ensure_synthetic(params, cache_dir=tmp_path / "b", progress=False, workers=2))
    assert a == b and len([k for k in a if k.endswith(".jpg")]) == 6
    shapes = SyntheticParams(**{**params.__dict__, "scene": "shapes"})
    assert shapes.key() != params.key() and shapes.folder_name() != params.folder_name()


def test_the_shapes_scenes_keep_their_keys():
    """The key of the default shapes benchmark, as before the crowd scene existed (at c63f3cb): its cached datasets
    and the dataset digests logged to MLflow stay valid."""
    assert SyntheticParams().key() == "67bbe21504a3"
    assert SyntheticParams(num_train=8, num_val=4).key() == "f7ea32ed66ea"


def test_a_scene_that_does_not_go_with_the_preset_is_refused(tmp_path):
    cfg = compose_config(["dataset=synthetic", "dataset.scene=crowd"]).dataset
    with pytest.raises(DatasetError, match="dataset.scene=crowd does not go with dataset.kind=synthetic.*"
                                           "dataset=synthetic_crowd"):
        synthetic_params(cfg)
    with pytest.raises(DatasetError, match="scene='forest'"):
        SyntheticParams(scene="forest")


def test_statistics_count_pairs_and_ignore_regions_as_brute_force(tmp_path):
    params = _params(tmp_path)
    root = ensure_synthetic(params, cache_dir=tmp_path, progress=False)
    stats = describe(root / "annotation_train.odgt", size_of_interest=[64, 128, 256, 512])
    records = read_ground_truth(root / "annotation_train.odgt")
    pairs = {t: 0 for t in (0.3, 0.5, 0.7)}
    persons = ignores = 0
    for r in records:
        boxes = r.boxes[~r.ignore].tolist()
        persons, ignores = persons + len(boxes), ignores + int(r.ignore.sum())
        for a, b in combinations(boxes, 2):
            for t in pairs:
                pairs[t] += _iou(a, b) >= t
    assert stats["same_image_box_pairs"] == {f"iou>={t}": n for t, n in pairs.items()}
    assert stats["pairs_per_image"]["iou>=0.5"] == round(pairs[0.5] / len(records), 2) and pairs[0.5] > 0
    assert stats["objects"] == persons and stats["crowd_regions"] == ignores
    assert stats["ignore_share_pct"] == round(100 * ignores / (persons + ignores), 1)


@pytest.mark.slow
def test_cli_prints_the_crowd_statistics_next_to_crowdhumans(tmp_path, train_env):
    result = run_in_process("date.data.synthetic", ["--preset", "synthetic_crowd", "--cache-dir", str(tmp_path),
                                                    "--stats", *SMALL], env=train_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pairs_per_image: {'iou>=0.3'" in result.stdout and "ignore_share_pct" in result.stdout
    assert result.stdout.count("CrowdHuman (train, full boxes): {'pairs_per_image': {'iou>=0.3': 9.0") == 2
