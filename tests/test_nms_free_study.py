"""experiments/nms_free_study.py on evaluation files of known numbers: the paired differences and p-values against
scipy on the per-seed values, Holm over the three primary comparisons by hand, the "about 0" verdict on the
pre-registered margin, the seed count by its written rule, and no number shown before every evaluation of the
schedule's pre-registered seeds is in."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.power import n_for_power

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import nms_free_study  # noqa: E402

STUDY = list(range(nms_free_study.PAIRS["1x"]))  # the 1x study's pre-registered seeds


def _write_evals(folder: Path, seeds, *, gain: dict[str, float], shift: dict[str, float] | None = None,
                 noise: float = 0.01, rng_seed: int = 0) -> dict:
    """evals/s<seed>_<variant>/duplicates.json as `python -m analysis.duplicates` writes them: AP without NMS = a
    per-seed base (which pairing removes) + the variant's shift + noise; with NMS, that + the variant's gain + noise.
    Returns {variant: {quantity: [value per seed]}}."""
    rng = np.random.default_rng(rng_seed)
    values = {v: {q: [] for q in nms_free_study.QUANTITIES} for v in nms_free_study.VARIANTS}
    for s in seeds:
        base = rng.uniform(0.2, 0.3)
        for v in nms_free_study.VARIANTS:
            ap_raw = base + (shift or {}).get(v, 0.0) + rng.normal(0, noise)
            row = {"variant": v, "seed": str(s), "ap_raw": ap_raw, "ap_nms": ap_raw + gain[v] + rng.normal(0, noise),
                   "duplicate_rate_raw": rng.uniform(0.1, 0.2), "duplicate_rate_nms": rng.uniform(0.05, 0.1)}
            row["gain"] = row["ap_nms"] - row["ap_raw"]
            for q in nms_free_study.QUANTITIES:
                values[v][q].append(row[q])
            out = folder / "evals" / f"s{s}_{v}"
            out.mkdir(parents=True)
            (out / "duplicates.json").write_text(json.dumps([{k: w for k, w in row.items() if k != "gain"}]))
    return values


def test_analyse_gives_scipys_paired_tests_holm_and_the_verdict_on_the_margin(tmp_path):
    folder = tmp_path / "1x"
    values = _write_evals(folder, STUDY, gain={"o2o": 0.02, "dual": 0.025, "o2o_3dmf": 0.0, "dual_3dmf": 0.001},
                          noise=0.001)
    result = nms_free_study.analyse(folder)
    assert result["seeds"] == STUDY
    for label, v, q, b, bq in nms_free_study.PRIMARY + nms_free_study.SECONDARY:
        row = result["comparisons"][label]
        d = np.subtract(values[v][q], values[b][bq])
        assert row["delta"] == pytest.approx(d.mean())
        assert row["p"] == pytest.approx(scipy_stats.ttest_rel(values[v][q], values[b][bq]).pvalue)
        half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        assert row["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    family = [result["comparisons"][label]["p"] for label, *_ in nms_free_study.PRIMARY]
    holm = [result["comparisons"][label]["p_holm"] for label, *_ in nms_free_study.PRIMARY]
    running = 0.0  # Holm by hand: (m - j + 1) p_(j), running maximum
    for j, i in enumerate(sorted(range(3), key=family.__getitem__)):
        running = max(running, min(1.0, (3 - j) * family[i]))
        assert holm[i] == pytest.approx(running)
    assert all(result["comparisons"][label]["p_holm"] is None for label, *_ in nms_free_study.SECONDARY)
    # DATE+3DMF's gain, 0.1 points with a tight interval: inside +-0.5 points
    gain = np.asarray(values["dual_3dmf"]["gain"])
    assert result["variants"]["dual_3dmf"]["gain"]["mean"] == pytest.approx(gain.mean())
    assert result["dual_3dmf_gain_about_zero"] is True
    assert "inside ±0.5" in (folder / "results.md").read_text()
    assert {p.name for p in folder.iterdir()} >= {"results.md", "results.json", "nms_free_study.png",
                                                  "nms_free_study.pdf"}


def test_a_gain_whose_interval_reaches_past_the_margin_is_not_about_zero(tmp_path):
    folder = tmp_path / "1x"
    _write_evals(folder, STUDY, gain={"o2o": 0.02, "dual": 0.025, "o2o_3dmf": 0.02, "dual_3dmf": 0.004}, noise=0.003)
    result = nms_free_study.analyse(folder)
    low, high = result["variants"]["dual_3dmf"]["gain"]["ci"]
    assert high > nms_free_study.EQUIVALENCE and result["dual_3dmf_gain_about_zero"] is False


def test_no_number_is_shown_before_every_preregistered_evaluation_is_in(tmp_path, capsys):
    folder = tmp_path / "3x"
    expected = list(range(nms_free_study.PAIRS["3x"]))
    _write_evals(folder, expected[:4], gain=dict.fromkeys(nms_free_study.VARIANTS, 0.02))
    assert nms_free_study.analyse(folder) is None  # seeds 0-3 complete, 4-5 not run: no analysis
    printed = capsys.readouterr().out
    assert f"in progress: 16 of its {4 * len(expected)} evaluations" in printed
    assert not (folder / "results.md").exists() and not (folder / "results.json").exists()
    _write_evals(folder, [9], gain=dict.fromkeys(nms_free_study.VARIANTS, 0.02))
    with pytest.raises(SystemExit, match=r"seeds \[9\], which are not 3x's pre-registered \[0, 1, 2, 3, 4, 5\]"):
        nms_free_study.analyse(folder)


def test_a_seed_without_every_variant_is_refused_in_the_pilot(tmp_path):
    _write_evals(tmp_path, (100, 101), gain=dict.fromkeys(nms_free_study.VARIANTS, 0.02))
    (tmp_path / "evals" / "s101_dual_3dmf" / "duplicates.json").unlink()
    with pytest.raises(SystemExit, match=r"seeds \[101\] lack a variant"):
        nms_free_study.seeds(tmp_path)


@pytest.mark.parametrize("noise,rule", [(0.002, "floor"), (0.2, "ceiling")])
def test_the_seed_count_is_the_largest_need_of_the_primary_comparisons_clamped(tmp_path, capsys, noise, rule):
    pilot = tmp_path / "3x" / "pilot"
    values = _write_evals(pilot, (100, 101, 102), gain={"o2o": 0.02, "dual": 0.03, "o2o_3dmf": 0.01, "dual_3dmf": 0.01},
                          shift={"dual_3dmf": 0.03}, noise=noise, rng_seed=3)
    result = nms_free_study.seeds(pilot)
    needs = []
    for _, v, q, b, bq in nms_free_study.PRIMARY:
        d = np.subtract(values[v][q], values[b][bq])
        needs.append(n_for_power(float(d.mean()), float(d.std(ddof=1)), paired=True))
    assert [r["n_needed"] for r in result["rows"]] == needs
    expected = min(max(max(needs), nms_free_study.SEED_FLOOR), nms_free_study.SEED_CEILING)
    assert result["n"] == expected and rule in result["why"]
    assert f"**N = {expected}** pairs" in (pilot / "seed_counts.md").read_text()
    assert f'PAIRS = {{..., "3x": {expected}}}' in capsys.readouterr().out  # the line to write, for its schedule


def test_the_script_runs_the_preregistered_seeds_and_refuses_a_schedule_without_its_pilot(tmp_path):
    """nms_free_study.sh takes a study's seeds from nms_free_study.py (PAIRS); a schedule without a count is refused
    before anything is created."""
    listed = subprocess.run([sys.executable, str(REPO / "experiments" / "nms_free_study.py"), "study-seeds", "3x"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert listed == [str(s) for s in range(nms_free_study.PAIRS["3x"])]
    env = {**os.environ, "PYTHON": sys.executable, "SCHEDULE": "2x", "STUDY_DIR": str(tmp_path / "study"),
           "OUT": str(tmp_path / "out")}
    refused = subprocess.run(["bash", str(REPO / "experiments" / "nms_free_study.sh"), "study"], cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 1
    assert "no seed count for 2x yet: run SCHEDULE=2x experiments/nms_free_study.sh pilot" in refused.stderr
    assert not (tmp_path / "study").exists() and not (tmp_path / "out").exists()


def test_schedules_pairs_3x_against_1x_by_seed_once_both_studies_are_in(tmp_path, capsys):
    """`schedules`: each detector's 3x minus 1x (NMS gain, AP and duplicate rate without NMS), paired by seed, against
    scipy on the per-seed values; nothing before both studies are complete."""
    shorter = _write_evals(tmp_path / "1x", STUDY, gain={"o2o": 0.02, "dual": 0.025, "o2o_3dmf": 0.02,
                                                           "dual_3dmf": 0.03}, rng_seed=1)
    with pytest.raises(SystemExit, match=r"3x/evals: no evaluation; run experiments/nms_free_study.sh first"):
        nms_free_study.schedules(tmp_path)
    gain_3x = {"o2o": 0.015, "dual": 0.01, "o2o_3dmf": 0.02, "dual_3dmf": 0.005}
    first = _write_evals(tmp_path / "3x", [0], gain=gain_3x, rng_seed=2)
    assert nms_free_study.schedules(tmp_path) is None  # the 3x study in progress: no number
    assert "The 3x NMS-free study is in progress: 4 of its" in capsys.readouterr().out
    assert not (tmp_path / "schedules.md").exists()
    rest = _write_evals(tmp_path / "3x", range(1, nms_free_study.PAIRS["3x"]), gain=gain_3x, rng_seed=3)
    longer = {v: {q: first[v][q] + rest[v][q] for q in first[v]} for v in first}
    result = nms_free_study.schedules(tmp_path)
    seeds = sorted(set(STUDY) & set(range(nms_free_study.PAIRS["3x"])))
    assert result["seeds"] == seeds
    for v in nms_free_study.VARIANTS:
        for q in ("gain", "ap_raw", "duplicate_rate_raw"):
            row = result["comparisons"][f"{nms_free_study.NAMES[v]}: {nms_free_study.QUANTITIES[q]}"]
            a, b = longer[v][q][: len(seeds)], shorter[v][q][: len(seeds)]
            assert row["delta"] == pytest.approx(np.mean(np.subtract(a, b)))
            assert row["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
            assert row["1x"] == pytest.approx(np.mean(b)) and row["3x"] == pytest.approx(np.mean(a))
    text = (tmp_path / "schedules.md").read_text()
    assert "Exploratory" in text and "| DATE | NMS gain (AP) |" in text
    assert json.loads((tmp_path / "schedules.json").read_text())["comparisons"] == json.loads(json.dumps(
        result["comparisons"]))
