"""experiments/level_diagnostics.py: the table and figure of the per-level positives of run dirs."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import level_diagnostics  # noqa: E402


def _run_dir(root: Path, mode: str, history: list[dict], model: str = "", name: str = "") -> Path:
    run = root / (name or mode)
    run.mkdir()
    (run / "config_resolved.yaml").write_text(f"assigner:\n  mode: {mode}\nschedule:\n  epochs: 12\nseed: 3\n{model}")
    (run / "level_diagnostics.json").write_text(json.dumps(history))
    return run


def test_report_gives_match_shares_and_positives_per_image(tmp_path):
    poto = _run_dir(tmp_path, "o2o", [{"epoch": e, "images": 10, "o2o": [6, 2, 2, 0, 0]} for e in (1, 2, 3)])
    date = _run_dir(tmp_path, "dual", [{"epoch": 1, "images": 10, "o2o": [1, 1, 2, 0, 0], "o2m": [150, 40, 0, 0, 0]},
                                       {"epoch": 2, "images": 10, "o2o": [4, 0, 0, 0, 0], "o2m": [100, 20, 0, 0, 0]}])
    out = tmp_path / "out"
    level_diagnostics.main([str(poto), str(date), "--out", str(out)])
    text = (out / "level_diagnostics.md").read_text()
    assert "| o2o, 12 epochs, seed 3 | 1 | 10 | 60.0% | 20.0% | 20.0% | 0.0% | 0.0% | – | – | – | – | – |" in text
    assert "| dual, 12 epochs, seed 3 | 1 | 10 | 25.0% | 25.0% | 50.0% | 0.0% | 0.0% | 15.00 | 4.00 | 0.00 |" in text
    assert text.count("| dual, 12 epochs") == 2  # first and last epoch (the middle of two is the last)
    assert text.count("| o2o, 12 epochs") == 3
    assert (out / "o2o_match_share.png").stat().st_size > 0 and (out / "o2o_match_share.pdf").stat().st_size > 0
    saved = json.loads((out / "level_diagnostics.json").read_text())
    assert [r["run"] for r in saved["runs"]] == ["o2o, 12 epochs, seed 3", "dual, 12 epochs, seed 3"]


def test_a_run_dir_without_diagnostics_is_named(tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(SystemExit, match="old/level_diagnostics.json: not found"):
        level_diagnostics.main([str(tmp_path / "old"), "--out", str(tmp_path / "out")])


def test_runs_are_labelled_with_the_switches_they_changed_from_the_papers_build(tmp_path):
    history = [{"epoch": 1, "images": 10, "o2o": [1, 1, 2, 0, 0], "o2m": [150, 40, 0, 0, 0]}]
    paper = "model:\n  share_towers: true\n  share_scales: true\n  size_of_interest: [64.0, 128.0, 256.0, 512.0]\n"
    runs = [_run_dir(tmp_path, "dual", history, paper, name="paper"),
            _run_dir(tmp_path, "dual", history, paper.replace("share_towers: true", "share_towers: false"),
                     name="towers"),
            _run_dir(tmp_path, "dual", history, paper.replace("[64.0, 128.0, 256.0, 512.0]", "[32.0, 64.0, 128.0, 256.0]")
                     .replace("share_scales: true", "share_scales: false"), name="ranges")]
    runs += [_run_dir(tmp_path, "o2o", [{"epoch": 1, "images": 10, "o2o": [1, 0, 0, 0, 0]}], name=f"poto{i}")
             for i in range(4)]  # seven panels: two rows of the figure
    level_diagnostics.main([*map(str, runs), "--out", str(tmp_path / "out")])
    labels = [r["run"] for r in json.loads((tmp_path / "out" / "level_diagnostics.json").read_text())["runs"]]
    assert labels[:3] == ["dual, 12 epochs, seed 3", "dual, share_towers=false, 12 epochs, seed 3",
                          "dual, share_scales=false, size_of_interest=[32,64,128,256], 12 epochs, seed 3"]
    assert (tmp_path / "out" / "o2o_match_share.png").stat().st_size > 0
