"""The synthetic benchmark: determinism, caching, atomic writes, COCO validity, statistics."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import run_in_process
from date.data.build import DatasetConfig, build_datasets, build_val_dataset
from date.data.errors import DatasetError
from date.data import synthetic
from date.data.synthetic import cache as synthetic_cache
from date.data.synthetic import SyntheticParams, describe, ensure_synthetic, render_image

TINY = SyntheticParams(num_train=6, num_val=4, image_size=64, max_objects=12, max_object_size=64.0)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = ensure_synthetic(TINY, cache_dir=tmp_path / "a", progress=False)
    b = ensure_synthetic(TINY, cache_dir=tmp_path / "b", progress=False, workers=2)  # workers do not matter
    da, db = _digest(a), _digest(b)
    assert da == db and len([k for k in da if k.endswith(".png")]) == 10
    assert {"instances_train.json", "instances_val.json", "params.json"} <= set(da)
    c = ensure_synthetic(SyntheticParams(**{**TINY.__dict__, "seed": 1}), cache_dir=tmp_path / "a", progress=False)
    assert c != a and _digest(c)["instances_train.json"] != da["instances_train.json"]


def test_cached_dataset_is_reused(tmp_path, monkeypatch):
    root = ensure_synthetic(TINY, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(synthetic_cache, "write_split", lambda *a, **k: pytest.fail("regenerated a cached dataset"))
    assert ensure_synthetic(TINY, cache_dir=tmp_path, progress=False) == root
    assert root.parent == tmp_path / "synthetic" and TINY.key() in root.name


def test_parameters_key_the_folder():
    assert SyntheticParams(num_train=10).key() != SyntheticParams(num_train=11).key()
    assert SyntheticParams().key() == SyntheticParams().key()


def test_killed_generation_leaves_no_complete_looking_split(tmp_path, monkeypatch):
    real = synthetic_cache.write_split

    def dies_on_val(p, split, root, **kw):
        if split == "val":
            raise KeyboardInterrupt
        return real(p, split, root, **kw)

    monkeypatch.setattr(synthetic_cache, "write_split", dies_on_val)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(TINY, cache_dir=tmp_path, progress=False)
    base, root = tmp_path / "synthetic", tmp_path / "synthetic" / TINY.folder_name()
    # the finished train split is kept; nothing of val is left, so val does not look complete
    assert sorted(p.name for p in root.iterdir()) == ["instances_train.json", "params.json", "train"]
    assert not list(base.glob("*.tmp-*"))
    # a temp folder left by a hard kill (no cleanup ran) is removed by the next generation
    (base / f"{TINY.folder_name()}.tmp-stale").mkdir()
    monkeypatch.setattr(synthetic_cache, "write_split", real)
    assert ensure_synthetic(TINY, cache_dir=tmp_path, progress=False) == root
    assert (root / "instances_val.json").is_file() and not list(base.glob("*.tmp-*"))
    assert _digest(root) == _digest(ensure_synthetic(TINY, cache_dir=tmp_path / "whole", progress=False))


def test_val_alone_generates_only_the_val_split(tmp_path):
    cfg = DatasetConfig(cache_dir=str(tmp_path / "a"), num_train=4, num_val=2, image_size=64, max_objects=6,
                        max_object_size=64, train_short_sizes=[64], max_size=64, test_short_size=64)
    val = build_val_dataset(cfg)
    root = val.image_dir
    assert len(val) == 2 and sorted(p.name for p in root.iterdir()) == ["instances_val.json", "params.json", "val"]
    before = (root / "instances_val.json").stat()
    train, _ = build_datasets(cfg)  # training adds the train split to the same folder, val kept as it was
    assert len(train) == 4 and train.image_dir == root
    after = (root / "instances_val.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # splits generated one at a time are byte-identical to both generated together
    cfg.cache_dir = str(tmp_path / "b")
    assert _digest(root) == _digest(build_datasets(cfg)[0].image_dir)


def test_cache_dir_from_env_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DATE_DATA_CACHE", str(tmp_path / "env"))
    assert synthetic.resolve_cache_dir(None) == tmp_path / "env"
    assert synthetic.resolve_cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv("DATE_DATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert synthetic.resolve_cache_dir(None) == tmp_path / "xdg" / "date"


def test_json_loads_in_pycocotools_and_perfect_detections_score_ap_1(tmp_path):
    root = ensure_synthetic(TINY, cache_dir=tmp_path, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "instances_val.json"))
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                for a in gt.dataset["annotations"]]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(dets) > 0 and ev.stats[0] == pytest.approx(1.0)
    assert len(gt.getCatIds()) == TINY.num_classes and len(gt.getImgIds()) == TINY.num_val


def test_scene_properties():
    # the crowded variant documented in conf/dataset/synthetic.yaml: the generator's full range
    p = SyntheticParams(image_size=128, max_objects=30, min_object_size=8.0, max_aspect_ratio=4.0,
                        cluster_prob=0.4, max_distractors=6)
    counts, labels, sides, border = [], set(), [], 0
    for i in range(20):
        image, objects = render_image(p, "train", i)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert 1 <= len(objects) <= p.max_objects
        counts.append(len(objects))
        for label, (x0, y0, x1, y1) in objects:
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            labels.add(label)
            sides.append(max(x1 - x0, y1 - y0))
            border += x0 == 0 or y0 == 0 or x1 == 128 or y1 == 128
    assert max(counts) >= 15 and labels == set(range(p.num_classes))  # crowded, every class
    assert min(sides) <= 16 and max(sides) >= 64 and border > 0  # scale spread, border cuts
    a, _ = render_image(p, "train", 0)
    assert np.array_equal(a, render_image(p, "train", 0)[0]) and not np.array_equal(a, render_image(p, "val", 0)[0])


def test_describe_counts(tmp_path):
    root = ensure_synthetic(TINY, cache_dir=tmp_path, progress=False)
    stats = describe(root / "instances_train.json", size_of_interest=[8, 16, 32, 64])
    n = len(json.loads((root / "instances_train.json").read_text())["annotations"])
    assert stats["images"] == 6 and stats["objects"] == n
    assert sum(stats["objects_per_level"].values()) == n and sum(stats["classes"].values()) == n
    assert stats["objects_per_image"]["min"] <= stats["objects_per_image"]["mean"] <= stats["objects_per_image"]["max"]


def test_statistics_count_a_location_on_a_level_bound_as_training_does(tmp_path):
    """FCOS's level ranges are closed, [low, high] (date/assign's fcos_assign, as FCOS's own code): the P4
    locations of box [0, 0, 72, 40] at (8, 8) and (8, 24) have max(l, t, r, b) = 64, P4's lower bound, and are
    positives. P3 (centres 4, 12, ... 68 by 4, 12, ... 36): the columns x = 4 and 68 reach 68 > 64, so 7 x 5."""
    ann = tmp_path / "one_box.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "width": 128, "height": 128}],
                               "categories": [{"id": 1, "name": "thing"}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 72, 40]}]}))
    stats = describe(ann, size_of_interest=[64, 128, 256, 512])
    assert stats["positive_locations_per_level"] == {"P3": 35, "P4": 2, "P5": 0, "P6": 0, "P7": 0}
    assert stats["o2m_positives_per_object"]["mean"] == 37.0 and stats["objects_without_positive"] == 0


@pytest.mark.slow
def test_cli_prints_statistics(tmp_path, train_env):
    args = ["--cache-dir", str(tmp_path), "num_train=3", "num_val=2", "image_size=64", "max_objects=5"]
    first = run_in_process("date.data.synthetic", [*args, "--stats"], env=train_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "generated in" in first.stdout and "objects_per_level" in first.stdout and "--- val" in first.stdout
    assert "size_of_interest: [64.0, 128.0, 256.0, 512.0]" in first.stdout  # the schema's default, as training has it
    assert "o2m_positives_per_object: {'mean'" in first.stdout and "objects_without_positive_pct" in first.stdout
    # the same keys written as date.train takes them find the same dataset
    again = run_in_process("date.data.synthetic", [*args[:2], *(f"dataset.{a}" for a in args[2:])], env=train_env,
                           cwd=tmp_path)
    assert "found in cache" in again.stdout and "RuntimeWarning" not in again.stderr


def test_bad_parameters_raise_dataset_error():
    with pytest.raises(DatasetError, match="num_classes=9"):
        SyntheticParams(num_classes=9)
    with pytest.raises(DatasetError, match="min_objects"):
        SyntheticParams(min_objects=5, max_objects=2)


def test_build_datasets_synthetic(tmp_path):
    cfg = DatasetConfig(cache_dir=str(tmp_path), num_train=4, num_val=2, image_size=64, max_objects=6,
                        max_object_size=64, train_short_sizes=[64], max_size=64, test_short_size=64)
    train, val = build_datasets(cfg)
    assert (len(train), len(val)) == (4, 2) and train.num_classes == 3
    assert train.label_to_category_id == [1, 2, 3] and val.coco.getImgIds() == [1, 2]
    image, target = val[0]
    assert image.shape == (3, 64, 64) and target["image_size"] == (64, 64)


# SHA-256 of the default training split (instances_train.json, then each image's name and decoded RGB pixels),
# computed at 5ca2b06, when the default val split had 96 images. Pixels rather than PNG bytes: the encoder's
# zlib may differ between machines, the pixels may not.
DEFAULT_TRAIN_SPLIT_SHA256 = "eebb7bd641d6b2c357b90460c6f17ce876e130507f64996e837ec82b92d66261"


def test_default_training_split_is_unchanged_by_the_larger_val_split(tmp_path):
    params = SyntheticParams()
    assert params.num_val >= 1000 and params.num_train == 224
    root = ensure_synthetic(params, cache_dir=tmp_path, progress=False, splits=["train"])
    digest = hashlib.sha256((root / "instances_train.json").read_bytes())
    for image in sorted((root / "train").iterdir()):
        digest.update(image.name.encode())
        digest.update(np.asarray(Image.open(image)).tobytes())
    assert digest.hexdigest() == DEFAULT_TRAIN_SPLIT_SHA256
