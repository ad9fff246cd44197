"""The crowd study's tables (experiments/README.md, "crowd_study"): does NMS cost FCOS recall and MR^-2 in crowds that
the NMS-free detectors keep?

    python experiments/crowd_study.py analyse experiments/results/crowd_study       # the study: results.md / .json
    python experiments/crowd_study.py seeds experiments/results/crowd_study/pilot   # the pilot: seed_counts.md

Reads the evaluation files experiments/crowd_study.sh writes, ``<folder>/evals/s<seed>_<variant>.json``
(``python -m date.evaluate out=``: COCO's numbers and CrowdHuman's ``crowd/*``), for the variants FCOS with NMS at
IoU 0.5 / 0.6 / 0.7 (one training each seed, evaluated at each threshold), POTO and DATE (no NMS). Seeds pair the
variants: every comparison is paired (analysis.stats.paired_t: mean difference, its 95% t-interval, p).

``analyse``: the mean and interval of every variant on CrowdHuman AP, MR^-2 (lower is better), JI and recall, beside
the paper's CrowdHuman table (R50); each NMS-free detector minus FCOS at each threshold; Holm's correction over the
pre-registered family (the four primary comparisons below). ``seeds``: the study's pair count from the pilot by the
rule written before the pilot: for each primary comparison (DATE and POTO against FCOS at NMS 0.6, the baseline's
own threshold, on recall and on MR^-2) the pairs a paired t-test needs for 80% power at two-sided alpha 0.05 with the
pilot's mean difference and sd taken as true; the largest of the four, clamped to [SEED_FLOOR, SEED_CEILING].
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from analysis.power import n_for_power, write_seed_count  # noqa: E402
from analysis.stats import holm, paired_t, summarize  # noqa: E402

NMS_THRESHOLDS = ("0.5", "0.6", "0.7")
VARIANTS = (*(f"o2m_nms{t}" for t in NMS_THRESHOLDS), "o2o", "dual")
NAMES = {**{f"o2m_nms{t}": f"FCOS, NMS {t}" for t in NMS_THRESHOLDS}, "o2o": "POTO (no NMS)", "dual": "DATE (no NMS)"}
METRICS = {"crowd/AP": "AP", "crowd/mMR": "MR^-2", "crowd/JI": "JI", "crowd/recall": "recall"}
LOWER_IS_BETTER = {"crowd/mMR"}
# The paper's CrowdHuman val table (R50; AP / MR^-2 / recall, %), as issue 22 quotes it; JI is not in it
PAPER = {"o2m_nms0.6": {"crowd/AP": 86.1, "crowd/mMR": 54.9, "crowd/recall": 94.2},
         "o2o": {"crowd/AP": 88.5, "crowd/mMR": 52.2, "crowd/recall": 96.3},
         "dual": {"crowd/AP": 90.5, "crowd/mMR": 49.0, "crowd/recall": 97.9}}
PRIMARY = [(v, "o2m_nms0.6", m) for v in ("dual", "o2o") for m in ("crowd/recall", "crowd/mMR")]
SEED_FLOOR, SEED_CEILING = 5, 12  # pairs: a paired interval's floor, and the CPU budget (3 runs a seed, ~8 min)
EVAL_FILE = re.compile(r"s(\d+)_(.+)\.json")


def read_evals(folder: Path) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {seed: evaluation}} from ``folder/evals``; refuses unknown variants and seeds missing a variant."""
    found: dict[str, dict[int, dict[str, float]]] = {v: {} for v in VARIANTS}
    for path in sorted((folder / "evals").glob("*.json")):
        match = EVAL_FILE.fullmatch(path.name)
        if match is None or match.group(2) not in found:
            sys.exit(f"{path}: not an evaluation file of the study (s<seed>_<{'|'.join(VARIANTS)}>.json)")
        found[match.group(2)][int(match.group(1))] = json.loads(path.read_text())
    seeds = set().union(*found.values())
    incomplete = sorted(s for s in seeds if any(s not in found[v] for v in VARIANTS))
    if not seeds:
        sys.exit(f"{folder / 'evals'}: no evaluation file; run experiments/crowd_study.sh first")
    if incomplete:
        sys.exit(f"{folder / 'evals'}: seeds {incomplete} lack a variant (rerun experiments/crowd_study.sh to finish "
                 "them): every comparison is paired")
    return found


def comparison(evals, variant: str, baseline: str, metric: str):
    seeds = sorted(evals[variant])
    return paired_t([evals[variant][s][metric] for s in seeds], [evals[baseline][s][metric] for s in seeds])


def _interval(low_high) -> str:
    return "–" if low_high is None else f"[{100 * low_high[0]:+.2f}, {100 * low_high[1]:+.2f}]"


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip() or "unknown"


def analyse(folder: Path) -> dict:
    evals = read_evals(folder)
    seeds = sorted(evals["o2o"])
    table = {v: {m: summarize([evals[v][s][m] for s in seeds]) for m in METRICS} for v in VARIANTS}
    family = [comparison(evals, v, b, m) for v, b, m in PRIMARY]
    adjusted = dict(zip(PRIMARY, holm([c.p for c in family])))
    lines = [f"# The crowd study: NMS-free detectors against FCOS with NMS on dataset=synthetic_crowd", "",
             f"`python experiments/crowd_study.py analyse {folder}` at commit {commit()}; {len(seeds)} paired seeds "
             f"({', '.join(map(str, seeds))}). Values ×100; 95% t-intervals over seeds; the paper's CrowdHuman val "
             "numbers (R50) beside.", "",
             "| detector | " + " | ".join(METRICS.values()) + " | paper AP / MR^-2 / recall |",
             "| --- |" + " ---: |" * len(METRICS) + " --- |"]
    for v in VARIANTS:
        cells = [f"{100 * table[v][m].mean:.2f} {_interval(table[v][m].ci).replace('+', '')}" for m in METRICS]
        paper = PAPER.get(v)
        cells.append(" / ".join(f"{paper[m]}" for m in ("crowd/AP", "crowd/mMR", "crowd/recall")) if paper else "–")
        lines.append(f"| {NAMES[v]} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences, NMS-free minus FCOS at each NMS threshold (MR^-2: negative is better); "
              "p of the paired t-test, Holm-adjusted over the four primary comparisons (marked *):", "",
              "| comparison | " + " | ".join(METRICS.values()) + " |", "| --- |" + " ---: |" * len(METRICS)]
    rows = {}
    for v in ("dual", "o2o"):
        for t in NMS_THRESHOLDS:
            baseline, cells = f"o2m_nms{t}", []
            for m in METRICS:
                c = comparison(evals, v, baseline, m)
                primary = (v, baseline, m) in adjusted
                p = adjusted[(v, baseline, m)] if primary else c.p
                rows[f"{v}-{baseline}/{m}"] = {"delta": c.delta, "ci": c.ci, "p": c.p, "p_holm": p if primary else None,
                                               "wins": c.wins, "n": c.n_variant}
                cells.append(f"{100 * c.delta:+.2f} {_interval(c.ci)}" + ("" if p is None else f" p={p:.3g}")
                             + ("*" if primary else ""))
            lines.append(f"| {NAMES[v]} − {NAMES[baseline]} | " + " | ".join(cells) + " |")
    result = {"command": f"python experiments/crowd_study.py analyse {folder}", "commit": commit(), "seeds": seeds,
              "variants": {v: {m: {"mean": s.mean, "ci": s.ci, "n": s.n} for m, s in table[v].items()}
                           for v in VARIANTS}, "comparisons": rows}
    (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    figure(table, folder)
    print("\n".join(lines))
    return result


def figure(table, folder: Path) -> None:
    """One panel per metric: each detector's mean with its interval, FCOS at its three NMS thresholds first."""
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4), constrained_layout=True)
    for ax, (metric, label) in zip(axes, METRICS.items()):
        for x, v in enumerate(VARIANTS):
            s = table[v][metric]
            err = None if s.ci is None else [[100 * (s.mean - s.ci[0])], [100 * (s.ci[1] - s.mean)]]
            ax.errorbar([x], [100 * s.mean], yerr=err, fmt="o", capsize=3, color="C0" if v.startswith("o2m") else "C3")
        ax.set_xticks(range(len(VARIANTS)), [NAMES[v].replace(" (no NMS)", "").replace("FCOS, ", "FCOS\n")
                                             for v in VARIANTS], fontsize=7)
        ax.set_title(label + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=9)
    for suffix in ("png", "pdf"):
        fig.savefig(folder / f"crowd_study.{suffix}", dpi=150)
    plt.close(fig)


def seeds(folder: Path) -> dict:
    evals = read_evals(folder)
    rows = []
    for v, b, m in PRIMARY:
        c = comparison(evals, v, b, m)
        needed = None if c.sd in (None, 0.0) else n_for_power(c.delta, c.sd, paired=True)
        rows.append({"comparison": f"{NAMES[v]} − {NAMES[b]}, {METRICS[m]}", "metric": METRICS[m], "delta": c.delta,
                     "sd": c.sd, "n_needed": needed})
    return write_seed_count(folder, study="crowd study", command=f"python experiments/crowd_study.py seeds {folder}",
                            commit=commit(), pilot_seeds=evals["o2o"], rows=rows, bounds=(SEED_FLOOR, SEED_CEILING),
                            write_into="experiments/crowd_study.sh: N={n}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("analyse", "seeds"))
    parser.add_argument("folder", type=Path, help="the study's (or the pilot's) output folder, holding evals/")
    args = parser.parse_args(argv)
    (analyse if args.stage == "analyse" else seeds)(args.folder)


if __name__ == "__main__":
    main()
