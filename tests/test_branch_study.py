"""experiments/branch_study.py on runs of known numbers: record reads a run's final evaluation (and a reused run's
o2m evaluation); analyse gives scipy's paired t-tests, Holm within each part by hand, and shows no number of a part
until every run of its pre-registered seeds is recorded."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import branch_study  # noqa: E402

SEEDS = (0, 1, 2, 3, 4)


def _run_dir(folder: Path, ap: float, o2m_ap=None) -> Path:
    """A run dir whose eval_results.json ends with an evaluation on all 1,000 val images."""
    folder.mkdir(parents=True)
    last = {"epoch": 12, "images": 1000, "val/AP": ap, "val/AP50": ap + 0.3}
    if o2m_ap is not None:
        last.update({"val/o2m/AP": o2m_ap, "val/o2m/AP50": o2m_ap + 0.3})
    (folder / "eval_results.json").write_text(json.dumps([{"epoch": 3, "images": 100, "val/AP": 0.01}, last]))
    return folder


def _write_part(root: Path, part: str, shift: dict[str, tuple[float, float]], seed: int = 0) -> dict:
    """Records of every seed and variant of a part through ``record``: a per-seed base (which pairing removes) +
    the variant's (o2o, o2m) shift + noise. Returns {variant: {"o2o": [per seed], "o2m": [...]}}."""
    rng = np.random.default_rng(seed)
    values = {v: {"o2o": [], "o2m": []} for v in branch_study.PARTS[part]}
    for s in SEEDS:
        base = rng.uniform(0.2, 0.3)
        for v in branch_study.PARTS[part]:
            o2o = base + shift.get(v, (0.0, 0.0))[0] + rng.normal(0, 0.01)
            o2m = base + shift.get(v, (0.0, 0.0))[1] + rng.normal(0, 0.01) if v.startswith("dual") else None
            values[v]["o2o"].append(o2o)
            values[v]["o2m"].append(o2m)
            run = _run_dir(root / "study" / f"s{s}" / v, o2o, o2m)
            branch_study.record(run, seed=s, variant=v, commit="abc1234", out=root / "out" / "runs" / f"s{s}_{v}.json",
                                o2m_eval=None)
    return values


def _check(row, variant: list[float], baseline: list[float]) -> None:
    d = np.subtract(variant, baseline)
    assert row["delta"] == pytest.approx(d.mean())
    assert row["p"] == pytest.approx(scipy_stats.ttest_rel(variant, baseline).pvalue)
    half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert row["ci"] == pytest.approx([d.mean() - half, d.mean() + half])


def test_analyse_pairs_each_branch_with_its_detector_alone_and_holms_each_part(tmp_path):
    values = _write_part(tmp_path, "A", {"o2m": (0.05, 0.0), "dual": (0.015, -0.06), "dual_towers": (0.02, -0.02),
                                         "o2m_ranges": (0.03, 0.0), "dual_ranges": (0.0, -0.01)})
    result = branch_study.analyse(tmp_path / "out", seeds=SEEDS)
    assert list(result["parts"]) == ["A"] and result["parts"]["A"]["seeds"] == list(SEEDS)
    rows = result["parts"]["A"]["comparisons"]
    # the o2m branch of DATE against FCOS alone: FCOS's value is its inference branch (o2m + NMS)
    _check(rows["DATE o2m − FCOS"], values["dual"]["o2m"], values["o2m"]["o2o"])
    _check(rows["DATE ranges /2 o2m − FCOS ranges /2"], values["dual_ranges"]["o2m"], values["o2m_ranges"]["o2o"])
    _check(rows["DATE share_towers=false o2o − POTO"], values["dual_towers"]["o2o"], values["o2o"]["o2o"])
    _check(rows["share_scales=false: change of DATE's o2m"], values["dual_scales"]["o2m"], values["dual"]["o2m"])
    _check(rows["ranges /2: change of FCOS"], values["o2m_ranges"]["o2o"], values["o2m"]["o2o"])
    family = [rows[label] for label, *_ in branch_study.PRIMARY["A"]]
    order = sorted(range(len(family)), key=lambda i: family[i]["p"])  # Holm by hand: (m - j) p_(j), running max
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (len(family) - j) * family[i]["p"]))
        assert family[i]["p_holm"] == pytest.approx(running)
    assert all(rows[label]["p_holm"] is None for label, *_ in branch_study.SECONDARY["A"])
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## Part B: not run yet" in text and "| DATE o2m − FCOS | -" in text
    assert "| DATE (the paper) | " in text and "abc1234" in text
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"results.json", "branch_study.png", "branch_study.pdf"}


def test_a_part_is_analysed_only_with_every_run_of_its_preregistered_seeds(tmp_path):
    _write_part(tmp_path, "A", {"dual": (0.02, -0.05)})
    _write_part(tmp_path, "B", {"dual_256": (0.02, -0.05)})
    runs = tmp_path / "out" / "runs"
    (runs / "s3_dual_256.json").unlink()  # part B one run short: reported, not analysed
    result = branch_study.analyse(tmp_path / "out", seeds=SEEDS)
    assert list(result["parts"]) == ["A"]
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## Part B: in progress, 14 of its 15 runs recorded" in text and "256 ch o2o − POTO" not in text
    # every recorded seed complete is not enough: the pre-registered ones are what is waited for
    with pytest.raises(SystemExit, match="no part has all its runs"):
        branch_study.analyse(tmp_path / "out", seeds=(*SEEDS, 5))
    for v in branch_study.PARTS["B"]:
        (runs / f"s4_{v}.json").unlink(missing_ok=True)
    (runs / "s3_o2o_256.json").unlink()
    (runs / "s3_o2m_256.json").unlink()  # seeds 0-2 of B complete, 3-4 missing
    result = branch_study.analyse(tmp_path / "out", seeds=SEEDS)
    assert list(result["parts"]) == ["A"] and "## Part B: in progress, 9 of its 15 runs recorded" in \
        (tmp_path / "out" / "results.md").read_text()
    # a run of a seed that was not pre-registered is refused, naming it
    (runs / "s9_o2o.json").write_text((runs / "s0_o2o.json").read_text())
    with pytest.raises(SystemExit, match=r"part A: runs of seeds \[9\], which are not the pre-registered"):
        branch_study.analyse(tmp_path / "out", seeds=SEEDS)


def test_the_script_runs_the_preregistered_seeds(tmp_path):
    """branch_study.sh takes its seeds from branch_study.py (one place): 0-7, as written before the first run."""
    assert branch_study.SEEDS == tuple(range(8))
    printed = subprocess.run([sys.executable, str(REPO / "experiments" / "branch_study.py"), "seeds"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    assert printed == [str(s) for s in branch_study.SEEDS]
    assert 'mapfile -t SEEDS < <("$PYTHON" experiments/branch_study.py seeds)' in \
        (REPO / "experiments" / "branch_study.sh").read_text()


def test_record_takes_a_reused_runs_o2m_evaluation_and_refuses_a_date_run_without_one(tmp_path):
    run = _run_dir(tmp_path / "reused", 0.26)
    with pytest.raises(SystemExit, match="a DATE run without its o2m branch's evaluation"):
        branch_study.record(run, seed=0, variant="dual", commit="49e509b", out=tmp_path / "r.json", o2m_eval=None)
    (tmp_path / "o2m.json").write_text(json.dumps({"AP": 0.21, "AP50": 0.6}))
    row = branch_study.record(run, seed=0, variant="dual", commit="49e509b", out=tmp_path / "r.json",
                              o2m_eval=tmp_path / "o2m.json")
    assert row["o2o"] == {"AP": 0.26, "AP50": pytest.approx(0.56)} and row["o2m"] == {"AP": 0.21, "AP50": 0.6}
    assert json.loads((tmp_path / "r.json").read_text()) == row and row["images"] == 1000
    poto = branch_study.record(_run_dir(tmp_path / "poto", 0.25), seed=0, variant="o2o", commit="49e509b",
                               out=tmp_path / "p.json", o2m_eval=None)
    assert poto["o2m"] is None
