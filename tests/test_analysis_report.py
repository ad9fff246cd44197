"""Variants, baselines, speed-up and the 'could not compute' notes, on hand-made run records."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.compare import build_report
from analysis.runs import RunQuery, RunRecord
from analysis.tables import to_latex, to_markdown

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def record(assigner, seed, curve, *, schedule="1x", use_3dmf="False", missing=None):
    missing = missing or {}
    final = {m: curve[max(curve)] for m in METRICS if m not in missing}
    groups = {"assigner": assigner, "schedule": schedule, "backbone": "resnet18", "branch_weighting": "equal",
              "dataset": "synthetic", "params.model.use_3dmf": use_3dmf}
    return RunRecord(run_id=f"{assigner}-{seed}-{schedule}", run_name=f"{assigner}_{seed}", seed=str(seed),
                     groups=groups, curve=curve, final=final, missing=missing)


def report_of(records):
    return build_report(RunQuery(uri="sqlite:///x.db", experiment="date", records=records))


def test_speedup_and_differences():
    records = [record("o2o", 0, {1: 0.10, 2: 0.20, 3: 0.30, 4: 0.40}),
               record("o2o", 1, {1: 0.12, 2: 0.22, 3: 0.32, 4: 0.42}),
               record("dual", 0, {1: 0.30, 2: 0.41, 3: 0.45, 4: 0.50}),
               record("dual", 1, {1: 0.30, 2: 0.43, 3: 0.47, 4: 0.52})]
    report = report_of(records)
    o2o, dual = report.results  # POTO before DATE
    assert (o2o.label, dual.label) == ("POTO", "DATE")
    assert o2o.target_ap == pytest.approx(0.41)
    assert (o2o.baseline_epochs, o2o.reach_epoch, o2o.speedup) == (4, 4, 1.0)
    assert dual.reach_epoch == 2 and dual.speedup == 2.0  # mean 0.42 at epoch 2 >= 0.41
    assert dual.versus["AP"].delta == pytest.approx(0.10)
    assert dual.versus["AP"].p is not None
    assert report.notes == []
    md = to_markdown(report)
    assert "| DATE | 51.00 ± 1.41 | 41.00 | 4 | 2 | 2.00× |" in md
    assert "Nothing: every number above was computed." in md
    assert r"DATE & 51.00 $\pm$ 1.41 & 41.00 & 4 & 2 & 2.00$\times$ \\" in to_latex(report)


def test_what_cannot_be_computed_is_said():
    records = [record("o2o", 0, {1: 0.2, 2: 0.4}), record("o2o", 1, {1: 0.2, 2: 0.4}),
               record("dual", 0, {1: 0.1, 2: 0.3}, missing={"APs": "-1 from COCOeval (no ground truth of that size)"}),
               record("o2m", 0, {1: 0.1, 2: 0.2}, schedule="3x")]
    report = report_of(records)
    notes = "\n".join(report.notes)
    assert "DATE [schedule 1x]: one run (seed 0): no std, confidence band or p-value." in notes
    assert "DATE [schedule 1x]: no usable val/APs in dual_0 (-1 from COCOeval (no ground truth of that size)); " \
           "its APs uses the other runs only (none: not computed)." in notes
    assert "DATE [schedule 1x]: p-values need >= 2 runs on both sides (1 vs 2 of POTO): differences only." in notes
    assert "DATE [schedule 1x]: its mean val/AP never reaches POTO's final mean AP 40.00 within its 2 epochs" in notes
    assert "FCOS [schedule 3x]: no POTO (o2o) runs in the same setting" in notes
    assert "POTO [schedule 1x]: both sides have zero variance" not in notes  # a baseline is not compared to itself
    dual = next(r for r in report.results if r.label == "DATE")
    assert dual.speedup is None and dual.versus["AP"].p is None and "APs" not in dual.final
    md = to_markdown(report)
    assert "| DATE | 1 | 0 | 30.00 | 30.00 | 30.00 | – | 30.00 | 30.00 |" in md
    assert "| DATE | POTO | -10.00 (p n/a) |" in md
    assert "never (≤ 2)" in md


def test_3dmf_variants_get_their_own_baseline():
    records = [record("o2o", s, {1: 0.3}, use_3dmf=u) for s in (0, 1) for u in ("False", "True")]
    records += [record("dual", s, {1: 0.35}, use_3dmf=u) for s in (0, 1) for u in ("False", "True")]
    report = report_of(records)
    labels = {r.label: r for r in report.results}
    assert set(labels) == {"POTO", "POTO + 3DMF", "DATE", "DATE + 3DMF"}
    assert labels["DATE + 3DMF"].baseline.label == "POTO + 3DMF"
    assert labels["DATE"].baseline.label == "POTO"


def test_a_dual_variant_with_an_o2m_switch_is_compared_with_the_one_poto():
    """POTO has no o2m branch: DATE with model.share_towers=false (an o2m-only switch) still has it as baseline,
    while a setting key (the backbone) does separate them."""
    def with_params(r, **params):
        r.groups.update({f"params.{k}": v for k, v in params.items()})
        return r

    records = [with_params(record("o2o", s, {1: 0.1, 2: 0.2}), **{"model.share_towers": "True"}) for s in (0, 1)]
    records += [with_params(record("dual", s, {1: 0.2, 2: 0.3}), **{"model.share_towers": "False"}) for s in (0, 1)]
    other = with_params(record("dual", 2, {1: 0.2, 2: 0.3}), **{"model.share_towers": "True"})
    other.groups["backbone"] = "resnet50"
    report = report_of([*records, other])
    unshared = next(r for r in report.results if r.label.startswith("DATE") and "share_towers" in r.label
                    and "R50" not in r.label)
    assert unshared.versus["AP"].delta == pytest.approx(0.10)
    assert any("R50" in note and "no POTO" in note for note in report.notes)


# Draws the figure of two variants in a fresh interpreter and prints the backend, then the files' magic bytes.
_DRAW = """
import sys
from pathlib import Path

import matplotlib
from analysis.plots import convergence_figure
from test_analysis_report import record, report_of

records = [record(a, s, {1: 0.1 + s / 50, 2: 0.3, 3: 0.4}) for a in ("o2o", "dual") for s in (0, 1)]
paths = convergence_figure(report_of(records), Path(sys.argv[1]))
print(matplotlib.get_backend(), *(p.read_bytes()[:4] for p in paths))
"""


def test_the_figure_module_leaves_the_callers_backend_alone(tmp_path):
    """A notebook's (here: svg) backend survives importing analysis.plots and drawing with it."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    result = subprocess.run([sys.executable, "-c", _DRAW, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["svg", repr(b"\x89PNG"), repr(b"%PDF")]
