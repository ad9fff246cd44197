"""``python -m date.crowdhuman_eval gt=... dt=... out=...``: the hand-computed numbers printed and written, sizes from
the gt lines or from images=DIR, and bad detection files as one message (exit code 2)."""
from __future__ import annotations

import json
import math

import pytest
from hydra import compose, initialize_config_dir

from conftest import run_in_process
from date.config import CONF_DIR
from date.crowdhuman_eval import run
from date.data.errors import DatasetError

try:
    from data_fixtures.crowdhuman import person, write_crowdhuman, write_odgt
except ImportError:  # tests/ imported as a package
    from tests.data_fixtures.crowdhuman import person, write_crowdhuman, write_odgt

# Three 100 x 100 images (xyxy):
# A: persons [0, 0, 10, 10], [30, 30, 40, 40]; detections FP [60, 60, 70, 70] 0.95, TP [0, 0, 10, 10] 0.85
# B: only an ignore region [0, 0, 50, 50]; detection [10, 10, 20, 20] 0.75 inside it (dropped)
# C: person [20, 20, 30, 30]; no detection line
# 3 persons, 3 images. Ranked FP, TP: recall 0, 1/3; precision 0, 1/2 -> AP = (1/3) * (1/2) / 2 = 1/12; recall 1/3.
# FPPI 1/3, 1/3; miss rate 1, 2/3: the 7 references <= 0.3162 -> 1, 0.5623 and 1.0 never reached -> 2/3:
# mMR = (2/3)^(2/9). JI at 0.0-0.8: A k 1, m 2, n 2 -> 1/3; B m = n = 0 (left out); C k 0, m 1 -> 0: mean 1/6.
GT = {"A": (100, 100, [person(0, 0, 10, 10), person(30, 30, 10, 10)]),
      "B": (100, 100, [person(0, 0, 50, 50, tag="mask", ignore=1)]),
      "C": (100, 100, [person(20, 20, 10, 10)])}
DT = [{"ID": "B", "dtboxes": [{"box": [10, 10, 10, 10], "score": 0.75, "tag": 1}], "height": 100, "width": 100},
      {"ID": "A", "dtboxes": [{"box": [60, 60, 10, 10], "score": 0.95}, {"box": [0, 0, 10, 10], "score": 0.85}]}]
EXPECTED = {"AP": 1 / 12, "mMR": (2 / 3) ** (2 / 9), "JI": 1 / (3 + 1e-6) / 2, "recall": 1 / 3}


def _files(tmp_path, *, sizes_in_lines: bool = True):
    root = write_crowdhuman(tmp_path / "ch", train={}, val=GT, sizes_in_lines=sizes_in_lines)
    return root / "annotation_val.odgt", write_odgt(tmp_path / "dt.odgt", DT), root / "Images"


def _run(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return run(compose(config_name="crowdhuman_eval", overrides=list(overrides)))


def test_the_command_prints_and_writes_the_hand_computed_numbers(tmp_path, train_env):
    gt, dt, _ = _files(tmp_path)
    out = tmp_path / "metrics.json"
    result = run_in_process("date.crowdhuman_eval", [f"gt={gt}", f"dt={dt}", f"out={out}"], env=train_env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # 1/12 = 0.0833, (2/3)^(2/9) = exp(-0.0901) = 0.9138, 1/6 = 0.1667, 1/3 = 0.3333
    assert result.stdout.splitlines()[-1] == "AP 0.0833  mMR 0.9138  JI 0.1667  recall 0.3333"  # after the log line
    written = json.loads(out.read_text())
    assert list(written) == ["AP", "mMR", "JI", "recall"]
    assert all(math.isclose(written[k], v, rel_tol=1e-9) for k, v in EXPECTED.items()), written


def test_sizes_from_the_images_instead_of_the_gt_lines(tmp_path):
    gt, dt, images = _files(tmp_path, sizes_in_lines=False)
    with pytest.raises(DatasetError, match=r"annotation_val\.odgt:1: record 'A' has no 'height' and 'width' .* or "
                                           r"pass images=DIR"):
        _run(f"gt={gt}", f"dt={dt}")
    assert _run(f"gt={gt}", f"dt={dt}", f"images={images}") == pytest.approx(EXPECTED, rel=1e-9)


def test_a_detection_id_not_in_the_ground_truth_is_one_message(tmp_path, train_env):
    gt, dt, _ = _files(tmp_path)
    write_odgt(dt, [*DT, {"ID": "Z", "dtboxes": []}])
    result = run_in_process("date.crowdhuman_eval", [f"gt={gt}", f"dt={dt}"], env=train_env, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert line == (f"Error: {dt}:3: ID 'Z' is not in the ground truth {gt}. Detections must be of the ground truth's "
                    "images: check that both files are of the same split.")


@pytest.mark.parametrize("line, message", [
    ('{"ID": "A", "dtboxes": [', r"dt\.odgt:2 is not valid JSON \(Expecting value, column 25\)"),
    ({"dtboxes": []}, r"dt\.odgt:2: record without 'ID'\. Each line needs 'ID' .* and 'dtboxes'\."),
    ({"ID": "C"}, r"dt\.odgt:2: record 'C' has no 'dtboxes' list \(got None\)"),
    ({"ID": "C", "dtboxes": [{"box": [1, 2, 3], "score": 0.5}]},
     r"dt\.odgt:2: dtboxes\[0\]: 'box' must be \[x, y, w, h\] \(4 finite numbers\), got \[1, 2, 3\]\."),
    ({"ID": "C", "dtboxes": [{"box": [1, 2, 3, 4]}]}, r"dt\.odgt:2: dtboxes\[0\] needs a finite number 'score', got None"),
    ({"ID": "A", "dtboxes": []}, r"dt\.odgt:2: ID 'A' was already on line 1\. Write one line per image\."),
])
def test_bad_detection_lines(tmp_path, line, message):
    gt, dt, _ = _files(tmp_path)
    write_odgt(dt, [DT[1], line])
    with pytest.raises(DatasetError, match=message):
        _run(f"gt={gt}", f"dt={dt}")


def test_gt_and_dt_are_required(tmp_path):
    from date.config import ConfigError

    with pytest.raises(ConfigError, match=r"Not set: gt, dt\. Pass gt=<ground-truth \.odgt> dt=<detection \.odgt>"):
        _run()


def test_a_missing_file_is_named(tmp_path):
    gt, _, _ = _files(tmp_path)
    with pytest.raises(DatasetError, match=r"The odgt file \S+nothing\.odgt does not exist\. Check the path \(gt= / dt="):
        _run(f"gt={gt}", f"dt={tmp_path / 'nothing.odgt'}")
