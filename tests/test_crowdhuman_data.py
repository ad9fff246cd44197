"""dataset=crowdhuman: the official odgt layout read through the dataset config (date/data/crowdhuman.py,
date/data/odgt.py): COCO items, ignore regions as crowd boxes, image sizes from the headers (cached by the
annotation file's hash), and every bad input of issue #22 with its message.

The tiny dataset (tests/data_fixtures/crowdhuman.py), boxes as xyxy after [x, y, w, h] -> [x, y, x + w, y + h]:
train image 1 (80 x 60): persons [10, 10, 30, 40] and [70, 20, 90, 50] (clipped to x2 = 80), ignore regions
[30, 5, 50, 25] (tag mask) and [0, 40, 10, 55] (a person with extra.ignore 1); image 2 (64 x 48): [5, 5, 35, 45].
val image 1 (80 x 60): [40, 10, 70, 55] and [-10, 0, 20, 50] (clipped to x1 = 0); image 2 (64 x 48): [20, 8, 40, 43].
"""
from __future__ import annotations

import hashlib
import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from date.config import compose_config
from date.crowd_metrics import ImageDT, crowd_metrics
from date.data.build import DatasetConfig, build_datasets, build_val_dataset
from date.data.coco import open_image
from date.data.crowdhuman import CrowdHumanDetection
from date.data.errors import DatasetError
from date.data.odgt import header_size

try:
    from data_fixtures.crowdhuman import VAL, person, write_crowdhuman, write_jpeg, write_odgt
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures.crowdhuman import VAL, person, write_crowdhuman, write_jpeg, write_odgt

SMALL = ["dataset.train_short_sizes=[60]", "dataset.max_size=100", "dataset.test_short_size=60",
         "dataset.multiscale_short_sizes=[60]", "dataset.multiscale_crop_resize=[60]", "dataset.multiscale_crop_size=[40,60]"]


def _cfg(root, **kw) -> DatasetConfig:
    return DatasetConfig(kind="crowdhuman", root=str(root), train_short_sizes=[60], max_size=100, test_short_size=60,
                         **kw)


def _split(root, split="val", **kw) -> CrowdHumanDetection:
    return CrowdHumanDetection(ann_file=root / f"annotation_{split}.odgt", image_dir=root / "Images", **kw)


def test_build_datasets_from_the_preset_reads_the_official_layout(tmp_path):
    root = write_crowdhuman(tmp_path / "crowdhuman")
    cfg = compose_config(["dataset=crowdhuman", f"dataset.root={root}", *SMALL]).dataset
    train, val = build_datasets(cfg)
    assert isinstance(train, CrowdHumanDetection) and len(train) == len(val) == 2
    assert train.num_classes == 1 and train.class_names == ["person"] and train.label_to_category_id == [1]
    assert train.crowdhuman_ids == ["273271,c9db000d5146c15", "273275,2ae8c5e0bd8e84f"]
    assert [(im["width"], im["height"]) for im in train.coco.dataset["images"]] == [(80, 60), (64, 48)]
    image, target = train[(0, 3)]  # the 1x training transforms: short side 60 (the image's own), maybe a flip
    assert image.dtype.is_floating_point and tuple(image.shape) == (3, 60, 80) and target["image_size"] == (60, 80)
    assert target["labels"].tolist() == [0, 0] and len(target["crowd_boxes"]) == 2
    assert target["boxes"].tolist() in ([[10.0, 10.0, 30.0, 40.0], [70.0, 20.0, 80.0, 50.0]],  # x -> 80 - x if flipped
                                        [[50.0, 10.0, 70.0, 40.0], [0.0, 20.0, 10.0, 50.0]])
    image, target = val[0]  # 80 x 60 -> short side 60: unchanged
    assert target["image_size"] == (60, 80) and target["orig_size"] == (60, 80)
    assert target["boxes"].tolist() == [[40.0, 10.0, 70.0, 55.0], [0.0, 0.0, 20.0, 50.0]]


def test_items_boxes_clipped_and_ignore_regions_as_crowd(tmp_path):
    ds = _split(write_crowdhuman(tmp_path), "train")  # no transforms: the file's pixels
    image, target = ds[0]
    assert tuple(image.shape) == (3, 60, 80) and target["image_id"] == 1
    assert target["boxes"].tolist() == [[10.0, 10.0, 30.0, 40.0], [70.0, 20.0, 80.0, 50.0]]
    assert target["labels"].tolist() == [0, 0]
    assert target["crowd_boxes"].tolist() == [[30.0, 5.0, 50.0, 25.0], [0.0, 40.0, 10.0, 55.0]]
    assert [a["iscrowd"] for a in ds.coco.dataset["annotations"]] == [0, 0, 1, 1, 0]
    gt = ds.crowd_gt[0]  # for the CrowdHuman metrics: as written (unclipped), with the flags and the size
    assert gt.boxes.tolist() == [[10, 10, 30, 40], [70, 20, 90, 50], [30, 5, 50, 25], [0, 40, 10, 55]]
    assert gt.ignore.tolist() == [False, False, True, True] and (gt.width, gt.height) == (80, 60)


def test_crowd_gt_feeds_the_crowdhuman_metrics(tmp_path):
    val = _split(write_crowdhuman(tmp_path))
    # the three persons' boxes as written, scores 0.9, 0.8 | 0.7: all true positives once clipped.
    # recall 1/3, 2/3, 1 at precision 1 -> AP = 1/3 + 1/3 = 2/3; no FP: mMR 0; JI mean(2/2, 1/1) = 1 (- eps)
    dts = [ImageDT(boxes=val.crowd_gt[0].boxes, scores=np.array([0.9, 0.8])),
           ImageDT(boxes=val.crowd_gt[1].boxes, scores=np.array([0.7]))]
    m = crowd_metrics(val.crowd_gt, dts)
    assert m["AP"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["mMR"] == 0.0
    assert m["JI"] == pytest.approx(1.0, abs=1e-5)


def test_crowd_scores_of_coco_results_are_the_metrics_of_the_same_boxes(tmp_path):
    """COCO result records ([x, y, w, h], as training and date.evaluate write them) -> the same numbers as
    crowd_metrics on those boxes; an evaluated image without any detection still counts."""
    val = _split(write_crowdhuman(tmp_path))
    records = [{"image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
               for image_id, scores in ((1, [0.9, 0.8]), (2, [0.7]))
               for (x1, y1, x2, y2), score in zip(val.crowd_gt[image_id - 1].boxes.tolist(), scores)]
    m = val.crowd_scores(records, [1, 2])
    assert m["AP"] == pytest.approx(2 / 3) and m["recall"] == 1.0 and m["mMR"] == 0.0  # as the test above
    no_second = val.crowd_scores(records[:2], [1, 2])  # image 2 evaluated, nothing found on it
    assert no_second["recall"] == pytest.approx(2 / 3)
    assert no_second == crowd_metrics(val.crowd_gt, [ImageDT(val.crowd_gt[0].boxes, np.array([0.9, 0.8])),
                                                     ImageDT(np.zeros((0, 4)), np.zeros(0))])
    assert val.crowd_scores(records[:2], [1])["recall"] == 1.0  # only image 1 evaluated (eval_subset)


def test_image_sizes_read_once_then_cached_by_the_annotation_hash(tmp_path, capsys):
    root = write_crowdhuman(tmp_path)
    ann = root / "annotation_val.odgt"
    assert _split(root).coco.imgs[1]["width"] == 80
    assert "image sizes annotation_val.odgt" in capsys.readouterr().err  # the progress bar of the first read
    cache = json.loads((root / "annotation_val.odgt.sizes.json").read_text())
    assert cache["key"]["sha1"] == hashlib.sha1(ann.read_bytes()).hexdigest()
    assert cache["sizes"]["284193,faa9000f2678b5e"] == [80, 60]
    write_jpeg(root / "Images" / "284193,faa9000f2678b5e.jpg", 40, 30)  # same annotations: the cache answers
    assert _split(root).coco.imgs[1]["width"] == 80 and "image sizes" not in capsys.readouterr().err
    ann.write_text(ann.read_text() + "\n")  # another hash (a blank line is no record): read again
    assert _split(root).coco.imgs[1]["width"] == 40 and "image sizes" in capsys.readouterr().err


def test_sizes_cached_in_the_data_cache_when_the_odgt_folder_is_not_writable(tmp_path):
    root = write_crowdhuman(tmp_path / "data")
    (root / "annotation_val.odgt.sizes.json").mkdir()  # the file cannot be written there (even as root)
    _split(root, cache_dir=str(tmp_path / "cache"))
    digest = hashlib.sha1((root / "annotation_val.odgt").read_bytes()).hexdigest()
    cached = json.loads((tmp_path / "cache" / "crowdhuman" / f"{digest}.sizes.json").read_text())
    assert cached["sizes"]["283554,35288000868e92d"] == [64, 48]


def test_header_size_follows_exif_rotation_as_the_loader_does(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view: stored 60 x 40, shown 40 x 60
    path = tmp_path / "r.jpg"
    Image.new("RGB", (60, 40)).save(path, exif=exif.tobytes())
    assert header_size(path) == (40, 60) == open_image(path).size


def test_val_split_alone(tmp_path):
    root = write_crowdhuman(tmp_path)
    (root / "annotation_train.odgt").unlink()
    assert len(build_val_dataset(_cfg(root))) == 2


# ---- bad input: one message each, naming the file and line


def _bad_val(tmp_path, lines) -> str:
    root = write_crowdhuman(tmp_path)
    write_odgt(root / "annotation_val.odgt", lines)
    with pytest.raises(DatasetError) as info:
        build_datasets(_cfg(root))
    return str(info.value)


GOOD = {"ID": "283554,35288000868e92d", "gtboxes": [person(20, 8, 20, 35)]}


def test_malformed_json_line(tmp_path):
    message = _bad_val(tmp_path, [GOOD, '{"ID": "x", "gtboxes": [{"tag": "person",'])
    assert re.fullmatch(r".*annotation_val\.odgt:2 is not valid JSON \(Expecting .*, column \d+\)\. An \.odgt file "
                        r"holds one JSON record per line: fix or regenerate that line .*", message)


def test_record_without_id(tmp_path):
    message = _bad_val(tmp_path, [GOOD, {"gtboxes": []}])
    assert re.fullmatch(r".*annotation_val\.odgt:2: record without 'ID'\. Each line needs 'ID' \(the image is "
                        r"Images/<ID>\.jpg\) and 'gtboxes'\.", message)


def test_record_without_gtboxes(tmp_path):
    message = _bad_val(tmp_path, [{"ID": "283554,35288000868e92d"}])
    assert re.fullmatch(r".*annotation_val\.odgt:1: record '283554,35288000868e92d' has no 'gtboxes' list \(got "
                        r"None\)\. Each line needs 'ID' and 'gtboxes' .*", message)


def test_id_without_its_image(tmp_path):
    message = _bad_val(tmp_path, [GOOD, {"ID": "999,missing", "gtboxes": [person(1, 1, 5, 5)]}])
    images = tmp_path / "Images"
    assert message == (f"1 ID(s) of {tmp_path / 'annotation_val.odgt'} have no image in {images}: annotation_val.odgt:2 "
                       f"999,missing -> {images / '999,missing.jpg'}. Point dataset.root at the folder holding "
                       "Images/<ID>.jpg (date.crowdhuman_eval: images= at the folder of <ID>.jpg), or restore the files.")


@pytest.mark.parametrize("fbox, shown", [([1, 2, 3], "[1, 2, 3]"), ([1, 2, "3", 4], "[1, 2, '3', 4]"),
                                         (None, "None")])
def test_malformed_fbox(tmp_path, fbox, shown):
    box = dict(person(1, 1, 5, 5), fbox=fbox)
    message = _bad_val(tmp_path, [GOOD, {"ID": "283554,35288000868e92d", "gtboxes": [person(1, 1, 5, 5), box]}])
    assert message.endswith(f"annotation_val.odgt:2: record '283554,35288000868e92d', gtboxes[1]: 'fbox' must be "
                            f"[x, y, w, h] (4 finite numbers), got {shown}.")


def test_duplicate_id_and_missing_tag(tmp_path):
    assert _bad_val(tmp_path, [GOOD, GOOD]).endswith(
        "annotation_val.odgt:2: ID '283554,35288000868e92d' was already on line 1. Each image has one line: merge the "
        "two records.")
    untagged = {k: v for k, v in person(1, 1, 5, 5).items() if k != "tag"}
    assert _bad_val(tmp_path, [{"ID": "283554,35288000868e92d", "gtboxes": [untagged]}]).endswith(
        "annotation_val.odgt:1: record '283554,35288000868e92d', gtboxes[0] has no string 'tag' (person, mask, ...), "
        "got None.")


def test_id_that_is_a_path(tmp_path):
    message = _bad_val(tmp_path, [{"ID": "../secret", "gtboxes": []}])
    assert message.endswith("annotation_val.odgt:1: 'ID' '../secret' is not an image name: it must be a non-empty "
                            "string without '/' (the image is Images/<ID>.jpg).")


def test_boxes_with_no_width_or_height_are_dropped_from_training_with_one_warning(tmp_path, caplog):
    val = dict(VAL)
    width, height, boxes = val["283554,35288000868e92d"]
    val["283554,35288000868e92d"] = (width, height, [*boxes, person(3, 3, 0, 10), person(3, 3, 10, -2)])
    root = write_crowdhuman(tmp_path, val=val)
    with caplog.at_level(logging.WARNING, logger="date.data.odgt"):
        ds = _split(root)
    [message] = [r.getMessage() for r in caplog.records if r.name == "date.data.odgt"]
    assert message == (f"{root / 'annotation_val.odgt'}: 2 box(es) with width or height <= 0 (line 2 gtboxes[1] "
                       "[3.0, 3.0, 0.0, 10.0]; line 2 gtboxes[2] [3.0, 3.0, 10.0, -2.0]): left out of training; the "
                       "CrowdHuman metrics keep them as the toolkit does (a person no detection can match, an ignore "
                       "region that absorbs nothing). Fix or delete them in the file to silence this.")
    assert ds[1][1]["boxes"].tolist() == [[20.0, 8.0, 40.0, 43.0]]  # the two are not trained on
    assert len(ds.crowd_gt[1].boxes) == 3 and not ds.crowd_gt[1].ignore.any()  # the metrics still count them


def test_empty_file_and_split_without_people(tmp_path):
    assert _bad_val(tmp_path, []).endswith("annotation_val.odgt holds no record: the split is empty. Check that it is "
                                           "the right file and was copied completely.")
    only_ignore = {"ID": "283554,35288000868e92d", "gtboxes": [person(1, 1, 9, 9, tag="mask", ignore=1)]}
    assert "annotation_val.odgt has no usable (non-crowd) box annotations" in _bad_val(tmp_path, [only_ignore])


def test_root_missing_or_not_a_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset=crowdhuman needs dataset\.root"):
        build_datasets(compose_config(["dataset=crowdhuman"]).dataset)  # root: ??? in the preset
    with pytest.raises(DatasetError, match=r"dataset\.root=\S+nowhere is not a folder\. Point it at the CrowdHuman "
                                           r"folder holding annotation_train\.odgt, annotation_val\.odgt and Images"):
        build_datasets(_cfg(tmp_path / "nowhere"))
    root = write_crowdhuman(tmp_path)
    (root / "annotation_train.odgt").unlink()
    with pytest.raises(DatasetError, match=r"annotation file \S+annotation_train\.odgt \(from dataset\.root=\S+ -> "
                                           r"train_ann\) does not exist"):
        build_datasets(_cfg(root))
