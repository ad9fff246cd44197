"""COCO-format datasets: validation of bad input, label mapping, crowd / degenerate boxes, image modes."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from date.data.build import DatasetConfig, build_datasets, build_val_dataset
from date.data.coco import CocoDetection
from date.data.errors import DatasetError

from conftest import run_in_process

try:
    from data_fixtures import write_coco, write_image
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures import write_coco, write_image


def _dataset(ann_file: Path, image_dir: Path, **kw) -> CocoDetection:
    return CocoDetection(ann_file=ann_file, image_dir=image_dir, **kw)


def test_loads_and_maps_categories_to_contiguous_labels(tmp_path):
    ds = _dataset(*write_coco(tmp_path))
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds.label_to_category_id == [3, 7, 11] and ds.class_names == ["cat", "dog", "bird"]
    image, target = ds[1]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 48, 64)
    assert target["labels"].tolist() == [2]  # category 11 -> label 2
    assert target["boxes"].tolist() == [[10.0, 10.0, 40.0, 30.0]]
    assert target["image_id"] == 2 and target["orig_size"] == (48, 64) and target["image_size"] == (48, 64)
    assert ds.coco.getImgIds() == [1, 2, 3]  # pycocotools index of the split, for COCOeval


def test_targets_mapped_back_score_ap_1_against_the_dataset_coco(tmp_path):
    # the evaluation path: labels -> label_to_category_id, xyxy -> xywh, COCOeval on dataset.coco
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    anns = [
        {"id": 0, "image_id": 1, "category_id": 3, "bbox": [4, 5, 20, 10]},
        {"id": 0, "image_id": 1, "category_id": 11, "bbox": [30, 20, 20, 20]},
        {"id": 0, "image_id": 2, "category_id": 7, "bbox": [10, 10, 30, 20]},
        {"id": 0, "image_id": 2, "category_id": 7, "bbox": [60, 40, 30, 30]},  # clipped to 64 x 48
    ]
    ds = _dataset(*write_coco(tmp_path, annotations=anns))
    dets = []
    for i in range(len(ds)):
        _, t = ds[i]
        for (x0, y0, x1, y1), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            dets.append({"image_id": t["image_id"], "category_id": ds.label_to_category_id[label],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 1.0})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(dets) == 4 and ev.stats[0] == pytest.approx(1.0)


def test_images_without_annotations_are_kept(tmp_path):
    ds = _dataset(*write_coco(tmp_path))
    _, target = ds[2]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["crowd_boxes"].shape == (0, 4)


def test_crowd_boxes_are_kept_apart(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30, 20, 20, 20], "iscrowd": 1},
    ]
    ds = _dataset(*write_coco(tmp_path, annotations=anns))
    _, target = ds[0]
    assert target["boxes"].tolist() == [[4.0, 5.0, 24.0, 15.0]] and target["labels"].tolist() == [0]
    assert target["crowd_boxes"].tolist() == [[30.0, 20.0, 50.0, 40.0]]


def test_degenerate_boxes_dropped_counted_and_boxes_clipped(tmp_path, caplog):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 5, 0, 10]},  # zero width
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [4, 5, 10, -3]},  # negative height
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [float("nan"), 5, 10, 10]},  # NaN
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [100, 100, 10, 10]},  # outside the 64x48 image
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [-5, 40, 20, 20]},  # partly outside: clipped
    ]
    with caplog.at_level(logging.WARNING, logger="date.data.coco"):
        ds = _dataset(*write_coco(tmp_path, annotations=anns))
    messages = [r.getMessage() for r in caplog.records if r.name == "date.data.coco"]
    assert len(messages) == 1  # once per dataset
    assert "dropped 3 degenerate" in messages[0] and "1 box(es) lying entirely outside" in messages[0]
    assert "train.json" in messages[0]
    _, target = ds[0]
    assert target["boxes"].tolist() == [[0.0, 40.0, 15.0, 48.0]]
    assert len(ds.coco.dataset["annotations"]) == 1


def test_annotation_ids_renumbered_when_zero_or_repeated(tmp_path):
    # COCOeval treats annotation id 0 as "unmatched": ids must be >= 1 and unique
    anns = [
        {"id": 0, "image_id": 1, "category_id": 3, "bbox": [4, 5, 20, 10]},
        {"id": 0, "image_id": 2, "category_id": 3, "bbox": [4, 5, 20, 10]},
    ]
    ds = _dataset(*write_coco(tmp_path, annotations=anns))
    assert sorted(a["id"] for a in ds.coco.dataset["annotations"]) == [1, 2]
    assert all(a["area"] == 200 and a["iscrowd"] == 0 for a in ds.coco.dataset["annotations"])


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_load_as_rgb(tmp_path, mode):
    ann_file, image_dir = write_coco(tmp_path)
    write_image(image_dir / "1.png", mode=mode, value=200)
    image, _ = _dataset(ann_file, image_dir)[0]
    assert image.shape == (3, 48, 64) and int(image[:, 0, 0].min()) == 200


def test_exif_rotated_image_loads_upright(tmp_path):
    ann_file, image_dir = write_coco(tmp_path, images=[{"id": 1, "file_name": "1.jpg", "width": 40, "height": 60}],
                                     annotations=[{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}],
                                     write_images=False)
    # Stored 60 wide x 40 high with a white left half; EXIF orientation 6 = "rotate 90 clockwise to view",
    # so the displayed image is 40 wide x 60 high with the white half on top.
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(image_dir / "1.jpg", exif=exif.tobytes(), quality=95)
    image, target = _dataset(ann_file, image_dir)[0]
    assert target["orig_size"] == (60, 40) and image.shape == (3, 60, 40)
    assert image[:, :25].float().mean() > 200 and image[:, 35:].float().mean() < 50


# ---- bad input: each raises DatasetError naming the file / id


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.json.*does not exist"):
        _dataset(tmp_path / "nope.json", tmp_path)


def test_malformed_json_names_file_and_line(tmp_path):
    ann_file, image_dir = write_coco(tmp_path)
    ann_file.write_text('{\n "images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DatasetError, match=r"train\.json is not valid JSON.*line 3"):
        _dataset(ann_file, image_dir)


def test_not_coco_structure(tmp_path):
    ann_file, image_dir = write_coco(tmp_path)
    ann_file.write_text(json.dumps({"annotations": []}))
    with pytest.raises(DatasetError, match=r"train\.json has no 'images' list"):
        _dataset(ann_file, image_dir)


def test_unknown_image_id(tmp_path):
    anns = [{"id": 1, "image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5]}]
    with pytest.raises(DatasetError, match=r"train\.json.*image_id.*99"):
        _dataset(*write_coco(tmp_path, annotations=anns))


def test_unknown_category_id(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]}]
    with pytest.raises(DatasetError, match=r"train\.json.*category_id.*42"):
        _dataset(*write_coco(tmp_path, annotations=anns))


def test_malformed_bbox(tmp_path):
    anns = [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, "5"]}]
    with pytest.raises(DatasetError, match=r"train\.json.*annotation 7.*malformed 'bbox'"):
        _dataset(*write_coco(tmp_path, annotations=anns))


def test_duplicate_image_id(tmp_path):
    images = [{"id": 1, "file_name": "1.png", "width": 64, "height": 48},
              {"id": 1, "file_name": "2.png", "width": 64, "height": 48}]
    with pytest.raises(DatasetError, match="image id 1 appears twice"):
        _dataset(*write_coco(tmp_path, images=images, annotations=[]))


def test_missing_image_file_is_found_up_front(tmp_path):
    ann_file, image_dir = write_coco(tmp_path)
    (image_dir / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image file\(s\).*missing.*2\.png"):
        _dataset(ann_file, image_dir)


@pytest.mark.parametrize("escape", ["../outside/secret.png", "sub/../../outside/secret.png", "absolute"])
def test_image_paths_outside_the_image_folder_are_rejected(tmp_path, escape):
    secret = write_image(tmp_path / "data" / "outside" / "secret.png")  # exists: only the path check stops it
    file_name = str(secret) if escape == "absolute" else escape
    images = [{"id": 1, "file_name": "1.png", "width": 64, "height": 48},
              {"id": 2, "file_name": file_name, "width": 64, "height": 48}]
    ann_file, image_dir = write_coco(tmp_path / "data", images=images, write_images=False, annotations=[])
    write_image(image_dir / "1.png")
    (image_dir / "sub").mkdir()
    with pytest.raises(DatasetError, match=rf"1 'file_name'.* outside the image folder .*: "
                                           rf"{re.escape(repr(file_name))}\. file_names must be relative"):
        _dataset(ann_file, image_dir, require_annotations=False)


def test_symlink_inside_the_image_folder_is_accepted(tmp_path):
    target = write_image(tmp_path / "elsewhere" / "real.png")
    images = [{"id": 1, "file_name": "link.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "./a/../2.png", "width": 64, "height": 48}]
    ann_file, image_dir = write_coco(tmp_path / "data", images=images, write_images=False, annotations=[])
    (image_dir / "link.png").symlink_to(target)
    (image_dir / "a").mkdir()
    write_image(image_dir / "2.png")
    ds = _dataset(ann_file, image_dir, require_annotations=False)
    assert len(ds) == 2 and ds[0][0].shape == (3, 48, 64)


def test_ids_of_the_wrong_type_are_shown_as_written(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": "3", "bbox": [1, 1, 5, 5]}]
    with pytest.raises(DatasetError, match=r"category_id\(s\) that are not in 'categories' \(3, 7, 11\): '3'\."):
        _dataset(*write_coco(tmp_path, annotations=anns))
    anns = [{"id": 1, "image_id": "1", "category_id": 3, "bbox": [1, 1, 5, 5]}]
    with pytest.raises(DatasetError, match=r"image_id\(s\) that are not in 'images': '1'\."):
        _dataset(*write_coco(tmp_path, annotations=anns))
    anns = [{"id": "7", "image_id": 1, "category_id": 3, "bbox": [1, 1, "5"]}]
    with pytest.raises(DatasetError, match=r"annotation '7' \(image_id 1\) has a malformed 'bbox'"):
        _dataset(*write_coco(tmp_path, annotations=anns))


def test_unreadable_image_names_the_file(tmp_path):
    ann_file, image_dir = write_coco(tmp_path)
    (image_dir / "2.png").write_bytes(b"this is not a png")
    ds = _dataset(ann_file, image_dir)  # existence is checked up front, decoding on load
    with pytest.raises(DatasetError, match=r"Cannot read image file .*2\.png"):
        ds[1]


def test_missing_width_height_read_from_file(tmp_path):
    images = [{"id": 1, "file_name": "1.png"}]
    ann_file, image_dir = write_coco(tmp_path, images=images, write_images=False,
                                     annotations=[{"id": 1, "image_id": 1, "category_id": 3, "bbox": [50, 0, 50, 10]}])
    write_image(image_dir / "1.png", width=70, height=30)
    ds = _dataset(ann_file, image_dir)
    assert ds.coco.imgs[1]["width"] == 70 and ds[0][1]["boxes"].tolist() == [[50.0, 0.0, 70.0, 10.0]]


def test_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match=r"train\.json lists no images"):
        _dataset(*write_coco(tmp_path, images=[], annotations=[]))


def test_split_without_annotations(tmp_path):
    with pytest.raises(DatasetError, match=r"val\.json has no usable .*annotations"):
        _dataset(*write_coco(tmp_path, name="val", annotations=[]))


# ---- build_datasets for the COCO kinds


def _coco_json_cfg(tmp_path) -> DatasetConfig:
    train_ann, train_images = write_coco(tmp_path, name="train")
    val_ann, val_images = write_coco(tmp_path, name="val")
    return DatasetConfig(kind="coco_json", train_ann=str(train_ann), train_images=str(train_images),
                         val_ann=str(val_ann), val_images=str(val_images), train_short_sizes=[96], max_size=128,
                         test_short_size=64)


def test_build_coco_json(tmp_path):
    train, val = build_datasets(_coco_json_cfg(tmp_path))
    image, target = train[(1, 5)]
    assert image.dtype == torch.float32 and target["image_size"] == (96, 128)
    assert torch.allclose(target["boxes"], torch.tensor([[10.0, 10.0, 40.0, 30.0]]) * 2, atol=1e-4) or \
        torch.allclose(target["boxes"], torch.tensor([[128 - 80.0, 20.0, 128 - 20.0, 60.0]]), atol=1e-4)  # flip
    image, target = val[0]
    assert target["image_size"] == (64, 85) and target["orig_size"] == (48, 64)


def test_build_coco_json_missing_key(tmp_path):
    cfg = _coco_json_cfg(tmp_path)
    cfg.val_images = None
    with pytest.raises(DatasetError, match="dataset.val_images"):
        build_datasets(cfg)


def test_build_coco_json_missing_folder(tmp_path):
    cfg = _coco_json_cfg(tmp_path)
    cfg.train_images = str(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"image folder .*elsewhere.*dataset\.train_images"):
        build_datasets(cfg)


def test_build_coco_without_root_from_yaml():
    from date.config import compose_config

    cfg = compose_config(["dataset=coco"]).dataset  # root: ??? in conf/dataset/coco.yaml
    with pytest.raises(DatasetError, match=r"dataset=coco needs dataset\.root"):
        build_datasets(cfg)


def test_build_coco_layout(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        ann, _ = write_coco(root, name=split)
        ann.rename(root / "annotations" / f"instances_{split}.json")
    train, val = build_datasets(DatasetConfig(kind="coco", root=str(root)), augmentation="3x")
    assert len(train) == len(val) == 3 and train.ann_file.name == "instances_train2017.json"
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DatasetError, match="instances_val2017.json"):
        build_datasets(DatasetConfig(kind="coco", root=str(root)))


def test_val_dataset_alone_reads_no_training_file(tmp_path):
    cfg = _coco_json_cfg(tmp_path)
    cfg.train_ann, cfg.train_images = str(tmp_path / "missing.json"), str(tmp_path / "missing")
    val = build_val_dataset(cfg)
    assert len(val) == 3 and val.ann_file.name == "val.json"
    with pytest.raises(DatasetError, match="missing.json"):
        build_datasets(cfg)


def test_val_dataset_alone_needs_no_training_keys(tmp_path):
    cfg = _coco_json_cfg(tmp_path)
    cfg.train_ann = cfg.train_images = None
    assert len(build_val_dataset(cfg)) == 3
    with pytest.raises(DatasetError, match=r"dataset=coco_json needs dataset\.train_ann, dataset\.train_images"):
        build_datasets(cfg)


def test_evaluate_with_only_the_val_split_given(tmp_path, train_env):
    """`python -m date.evaluate dataset=coco_json` takes the val keys alone: no training file exists here."""
    from date.config import compose_config, resolved_config
    from date.modeling.build import build_detector
    from date.runtime import checkpoint as ckpt

    cfg = compose_config(["backbone.fpn_channels=64", "model.num_convs=1"])
    checkpoint = tmp_path / "model_final.pth"
    ckpt.save_atomic({"model": build_detector(cfg, num_classes=3).state_dict(), "config": resolved_config(cfg)},
                     checkpoint)
    val_ann, val_images = write_coco(tmp_path, name="val")
    result = run_in_process("date.evaluate", [f"checkpoint={checkpoint}", "dataset=coco_json",
                                              f"dataset.val_ann={val_ann}", f"dataset.val_images={val_images}",
                                              "dataset.test_short_size=64", "dataset.max_size=128", "device=cpu",
                                              "num_workers=0", f"out={tmp_path / 'eval.json'}"],
                            env=train_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads((tmp_path / "eval.json").read_text())) == 12


def test_build_categories_must_agree(tmp_path):
    cfg = _coco_json_cfg(tmp_path)
    write_coco(tmp_path, name="val", categories=[{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
               annotations=[{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(DatasetError, match="categories"):
        build_datasets(cfg)


def test_build_unknown_kind():
    with pytest.raises(DatasetError, match="dataset.kind='lvis'"):
        build_datasets(DatasetConfig(kind="lvis"))
