"""experiments/crowd_study.py on evaluation files of known numbers: the paired differences and p-values against
scipy on the per-seed values, Holm over the four primary comparisons by hand, the seed count by its written rule,
and the refusal of a seed that lacks a variant."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis.power import n_for_power

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import crowd_study  # noqa: E402

SEEDS = (100, 101, 102, 103)


def _write_evals(folder: Path, shift: dict[str, float], noise: float = 0.02, seed: int = 0) -> dict:
    """s<seed>_<variant>.json for every seed and variant: a per-seed base (which pairing removes) + the variant's
    shift + noise. Returns {variant: {metric: [value per seed]}}."""
    rng = np.random.default_rng(seed)
    (folder / "evals").mkdir(parents=True)
    values = {v: {m: [] for m in crowd_study.METRICS} for v in crowd_study.VARIANTS}
    for s in SEEDS:
        base = {m: rng.uniform(0.3, 0.7) for m in crowd_study.METRICS}
        for v in crowd_study.VARIANTS:
            record = {"AP": 0.1}
            for m in crowd_study.METRICS:
                record[m] = base[m] + shift.get(v, 0.0) + rng.normal(0, noise)
                values[v][m].append(record[m])
            (folder / "evals" / f"s{s}_{v}.json").write_text(json.dumps(record))
    return values


def test_analyse_gives_scipys_paired_tests_and_holm_over_the_primary_family(tmp_path):
    values = _write_evals(tmp_path, {"o2m_nms0.5": -0.05, "o2o": 0.03, "dual": 0.04})
    result = crowd_study.analyse(tmp_path)
    assert result["seeds"] == list(SEEDS)
    raw = {}
    for v in ("dual", "o2o"):
        for t in crowd_study.NMS_THRESHOLDS:
            for m in crowd_study.METRICS:
                row = result["comparisons"][f"{v}-o2m_nms{t}/{m}"]
                d = np.subtract(values[v][m], values[f"o2m_nms{t}"][m])
                assert row["delta"] == pytest.approx(d.mean())
                assert row["p"] == pytest.approx(scipy_stats.ttest_rel(values[v][m], values[f"o2m_nms{t}"][m]).pvalue)
                half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
                assert row["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
                raw[(v, f"o2m_nms{t}", m)] = row
    family = [raw[key] for key in crowd_study.PRIMARY]
    order = sorted(range(4), key=lambda i: family[i]["p"])  # Holm by hand: (m - j + 1) p_(j), running maximum
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (4 - j) * family[i]["p"]))
        assert family[i]["p_holm"] == pytest.approx(running)
    assert all(row["p_holm"] is None for key, row in raw.items() if key not in crowd_study.PRIMARY)
    means = result["variants"]["dual"]["crowd/recall"]
    assert means["mean"] == pytest.approx(np.mean(values["dual"]["crowd/recall"])) and means["n"] == 4
    assert {p.name for p in tmp_path.iterdir()} >= {"results.md", "results.json", "crowd_study.png", "crowd_study.pdf"}
    assert "| DATE (no NMS) − FCOS, NMS 0.6 |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("noise,expected_rule", [(0.012, "computed"), (0.005, "floor"), (0.2, "ceiling")])
def test_the_seed_count_is_the_largest_need_of_the_primary_comparisons_clamped(tmp_path, noise, expected_rule):
    values = _write_evals(tmp_path, {"o2m_nms0.6": -0.03}, noise=noise, seed=1)
    result = crowd_study.seeds(tmp_path)
    needs = []
    for v, b, m in crowd_study.PRIMARY:
        d = np.subtract(values[v][m], values[b][m])
        needs.append(n_for_power(float(d.mean()), float(d.std(ddof=1)), paired=True))
    assert [r["n_needed"] for r in result["rows"]] == needs
    if None in needs:
        expected = crowd_study.SEED_CEILING
    else:
        expected = min(max(max(needs), crowd_study.SEED_FLOOR), crowd_study.SEED_CEILING)
    assert result["n"] == expected
    words = {"computed": "as computed", "floor": "raised to the floor", "ceiling": "ceiling"}
    assert words[expected_rule] in result["why"]
    assert f"**N = {expected}** pairs" in (tmp_path / "seed_counts.md").read_text()


def test_a_seed_without_every_variant_is_refused_by_name(tmp_path):
    _write_evals(tmp_path, {})
    (tmp_path / "evals" / "s102_dual.json").unlink()
    with pytest.raises(SystemExit, match=r"seeds \[102\] lack a variant"):
        crowd_study.analyse(tmp_path)
