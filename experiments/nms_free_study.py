"""The NMS-free study's tables (experiments/README.md, "nms_free_study"; issue 23, item 3): does DATE need NMS on
this benchmark, and does 3DMF bring NMS's gain to about 0?

    python experiments/nms_free_study.py analyse experiments/results/nms_free_study/1x        # results.md / .json
    python experiments/nms_free_study.py seeds experiments/results/nms_free_study/1x/pilot    # seed_counts.md
    python experiments/nms_free_study.py study-seeds 3x    # the schedule's pre-registered seeds (nms_free_study.sh)
    python experiments/nms_free_study.py schedules experiments/results/nms_free_study   # 3x against 1x, by seed

Reads what experiments/nms_free_study.sh writes, ``<folder>/evals/s<seed>_<variant>/duplicates.json``
(``python -m analysis.duplicates`` on one final checkpoint: AP of the raw top-100 and after NMS, duplicate rates),
for POTO and DATE, each with and without 3DMF. A run's *NMS gain* is its AP after NMS minus its AP without. Seeds
pair the variants: every comparison is paired (analysis.stats.paired_t: mean difference, 95% t-interval, p).

The pre-registered family (Holm over these three): DATE's NMS gain (is it 0?), 3DMF's change of DATE's NMS gain,
and 3DMF's change of DATE's AP without NMS. "3DMF brings NMS's gain to about 0" holds when the 95% interval of
DATE+3DMF's NMS gain lies inside +-EQUIVALENCE AP. ``seeds``: the study's pair count from the pilot by the rule
written before it ran: for each primary comparison the pairs a paired t-test needs for 80% power at two-sided
alpha 0.05 with the pilot's mean difference and sd taken as true; the largest, clamped to [SEED_FLOOR, SEED_CEILING].
That count is written into PAIRS before the schedule's study runs; ``analyse`` shows a study only when every
evaluation of its pre-registered seeds 0 .. N-1 is in (until then it says how many are, and no number).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402

from analysis.power import n_for_power, write_seed_count  # noqa: E402
from analysis.stats import holm, paired_t, summarize  # noqa: E402

VARIANTS = ("o2o", "dual", "o2o_3dmf", "dual_3dmf")
NAMES = {"o2o": "POTO", "dual": "DATE", "o2o_3dmf": "POTO+3DMF", "dual_3dmf": "DATE+3DMF"}
# quantity -> (label, how to read it from a duplicates.json row); AP and rates as fractions
QUANTITIES = {"ap_raw": "AP no NMS", "ap_nms": "AP NMS", "gain": "NMS gain (AP)",
              "duplicate_rate_raw": "dup. rate no NMS", "duplicate_rate_nms": "dup. rate NMS"}
# (label, variant, quantity, baseline variant, baseline quantity): variant.quantity - baseline.quantity, paired
PRIMARY = [("DATE: NMS gain", "dual", "ap_nms", "dual", "ap_raw"),
           ("DATE: 3DMF's change of the NMS gain", "dual_3dmf", "gain", "dual", "gain"),
           ("DATE: 3DMF's change of AP without NMS", "dual_3dmf", "ap_raw", "dual", "ap_raw")]
SECONDARY = [("POTO: NMS gain", "o2o", "ap_nms", "o2o", "ap_raw"),
             ("POTO: 3DMF's change of the NMS gain", "o2o_3dmf", "gain", "o2o", "gain"),
             ("POTO: 3DMF's change of AP without NMS", "o2o_3dmf", "ap_raw", "o2o", "ap_raw"),
             ("DATE+3DMF: NMS gain", "dual_3dmf", "ap_nms", "dual_3dmf", "ap_raw"),
             ("POTO+3DMF: NMS gain", "o2o_3dmf", "ap_nms", "o2o_3dmf", "ap_raw"),
             ("DATE − POTO, no NMS", "dual", "ap_raw", "o2o", "ap_raw"),
             ("DATE+3DMF − POTO+3DMF, no NMS", "dual_3dmf", "ap_raw", "o2o_3dmf", "ap_raw"),
             ("DATE+3DMF without NMS − DATE with NMS", "dual_3dmf", "ap_raw", "dual", "ap_nms"),
             ("DATE: NMS's change of the duplicate rate", "dual", "duplicate_rate_nms", "dual", "duplicate_rate_raw")]
EQUIVALENCE = 0.005  # AP (0.5 points): an NMS gain whose 95% interval lies inside +-this is "about 0"
SEED_FLOOR, SEED_CEILING = 4, 6  # pairs: a paired interval's floor; the CPU budget (4 runs a seed, ~7 min each)
# Pre-registered pairs per schedule, each from its own pilot (<schedule>/pilot/seed_counts.md), written here before
# that schedule's study ran: the study's seeds are 0 .. N-1 (nms_free_study.sh reads them with `study-seeds`).
PAIRS = {"1x": 6,  # pilot at d56c694, written at 49e509b
         "3x": 6}  # pilot at ef16b65, written at 31cc899 (lost with its session; its files are 07a8a23's)
EVAL_DIR = re.compile(r"s(\d+)_(.+)")


def study_seeds(schedule: str) -> list[int]:
    """The pre-registered seeds of ``schedule``'s study; exits when its pilot has not fixed their count yet."""
    if schedule not in PAIRS:
        sys.exit(f"no seed count for {schedule} yet: run SCHEDULE={schedule} experiments/nms_free_study.sh pilot, "
                 f"then experiments/nms_free_study.py seeds on its folder, and write N into PAIRS in "
                 f"experiments/nms_free_study.py (known: {', '.join(PAIRS)})")
    return list(range(PAIRS[schedule]))


def read_evals(folder: Path, *, complete: bool = True) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {seed: {quantity: value}}} from ``folder/evals``; refuses unknown variants and, with ``complete``,
    seeds that lack a variant."""
    found: dict[str, dict[int, dict[str, float]]] = {v: {} for v in VARIANTS}
    for path in sorted((folder / "evals").glob("*/duplicates.json")):
        match = EVAL_DIR.fullmatch(path.parent.name)
        if match is None or match.group(2) not in found:
            sys.exit(f"{path}: not an evaluation of the study (evals/s<seed>_<{'|'.join(VARIANTS)}>/duplicates.json)")
        (row,) = json.loads(path.read_text())  # one checkpoint per call of analysis.duplicates
        found[match.group(2)][int(match.group(1))] = {**{q: row[q] for q in QUANTITIES if q != "gain"},
                                                      "gain": row["ap_nms"] - row["ap_raw"]}
    seeds = set().union(*found.values())
    if not seeds:
        sys.exit(f"{folder / 'evals'}: no evaluation; run experiments/nms_free_study.sh first")
    incomplete = sorted(s for s in seeds if any(s not in found[v] for v in VARIANTS))
    if incomplete and complete:
        sys.exit(f"{folder / 'evals'}: seeds {incomplete} lack a variant (rerun experiments/nms_free_study.sh to "
                 "finish them): every comparison is paired")
    return found


def compare(evals, variant: str, quantity: str, baseline: str, base_quantity: str):
    seeds = sorted(evals[variant])
    return paired_t([evals[variant][s][quantity] for s in seeds], [evals[baseline][s][base_quantity] for s in seeds])


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip() or "unknown"


def _points(value: float, low_high=None) -> str:
    cell = f"{100 * value:+.2f}"
    return cell if low_high is None else f"{cell} [{100 * low_high[0]:+.2f}, {100 * low_high[1]:+.2f}]"


def schedule_of(folder: Path) -> str:
    """The schedule a study folder holds: its name (experiments/results/nms_free_study/<schedule>)."""
    name = folder.resolve().name
    if not re.fullmatch(r"\d+x", name):
        sys.exit(f"{folder}: not named for a schedule (1x, 3x); pass --schedule")
    return name


def study_evals(folder: Path, schedule: str) -> Optional[dict[str, dict[int, dict[str, float]]]]:
    """The evaluations of ``schedule``'s pre-registered seeds in ``folder``, once every one is in; before that, how
    many are (printed) and None. Exits on a seed that was not pre-registered."""
    expected = study_seeds(schedule)
    evals = read_evals(folder, complete=False)
    extra = sorted(set().union(*evals.values()) - set(expected))
    if extra:
        sys.exit(f"{folder / 'evals'}: evaluations of seeds {extra}, which are not {schedule}'s pre-registered "
                 f"{expected} (experiments/nms_free_study.py PAIRS): remove them; seeds are never added after "
                 "looking at p")
    done = sum(s in evals[v] for v in VARIANTS for s in expected)
    if done < len(VARIANTS) * len(expected):
        print(f"The {schedule} NMS-free study is in progress: {done} of its {len(VARIANTS) * len(expected)} "
              f"evaluations (seeds {expected[0]}-{expected[-1]}) are in {folder / 'evals'}; it is analysed when all "
              "are (rerun experiments/nms_free_study.sh to finish them).")
        return None
    return evals


def analyse(folder: Path, schedule: Optional[str] = None) -> Optional[dict]:
    """The study's tables and figure, once every evaluation of the schedule's pre-registered seeds is in; before
    that, how many are (and None). Exits on a seed that was not pre-registered."""
    schedule = schedule or schedule_of(folder)
    evals = study_evals(folder, schedule)
    if evals is None:
        return None
    seeds = study_seeds(schedule)
    table = {v: {q: summarize([evals[v][s][q] for s in seeds]) for q in QUANTITIES} for v in VARIANTS}
    primary = [compare(evals, *row[1:]) for row in PRIMARY]
    adjusted = holm([c.p for c in primary])
    gain = table["dual_3dmf"]["gain"]
    about_zero = gain.ci is not None and -EQUIVALENCE < gain.ci[0] and gain.ci[1] < EQUIVALENCE
    command = f"python experiments/nms_free_study.py analyse {folder}"
    at = commit()  # one `git rev-parse` for the table and the JSON
    lines = ["# The NMS-free study: does DATE need NMS here, and does 3DMF remove the need?", "",
             f"`{command}` at commit {at}; {len(seeds)} paired seeds ({', '.join(map(str, seeds))}). AP in "
             "points and duplicate rates in % on the 1,000 val images, raw top-100 (no NMS) and after NMS at IoU 0.6 "
             "(`analysis.duplicates`); mean [95% t-interval] over seeds.", "",
             "| detector | " + " | ".join(QUANTITIES.values()) + " |", "| --- |" + " ---: |" * len(QUANTITIES)]
    for v in VARIANTS:
        lines.append(f"| {NAMES[v]} | " + " | ".join(
            _points(table[v][q].mean, table[v][q].ci).replace("+", "") if q != "gain"
            else _points(table[v][q].mean, table[v][q].ci) for q in QUANTITIES) + " |")
    lines += ["", "Paired differences (points), p of the paired t-test; the primary family Holm-adjusted (marked *):",
              "", "| comparison | Δ [95% CI] | p | seeds above 0 |", "| --- | ---: | ---: | ---: |"]
    rows = {}
    for (label, *spec), c, p_holm in [*zip(PRIMARY, primary, adjusted),
                                      *((row, compare(evals, *row[1:]), None) for row in SECONDARY)]:
        rows[label] = {"delta": c.delta, "ci": c.ci, "p": c.p, "p_holm": p_holm, "wins": c.wins, "n": c.n_variant}
        p = f"{c.p:.3g}" if p_holm is None else f"{p_holm:.3g}*"
        lines.append(f"| {label} | {_points(c.delta, c.ci)} | {p} | {c.wins}/{c.n_variant} |")
    verdict = ("inside" if about_zero else "not inside")
    lines += ["", f"DATE+3DMF's NMS gain: {_points(gain.mean, gain.ci)} points, {verdict} ±{100 * EQUIVALENCE:.1f} "
              f"(the pre-registered margin for \"about 0\")."]
    result = {"command": command, "commit": at, "seeds": seeds, "equivalence_margin": EQUIVALENCE,
              "dual_3dmf_gain_about_zero": about_zero,
              "variants": {v: {q: {"mean": s.mean, "ci": s.ci, "n": s.n} for q, s in table[v].items()}
                           for v in VARIANTS}, "comparisons": rows}
    (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    figure(evals, table, folder)
    print("\n".join(lines))
    return result


def figure(evals, table, folder: Path) -> None:
    """Left: each detector's AP without and with NMS, one thin line per seed. Right: its NMS gain with the 95%
    interval and the +-EQUIVALENCE band."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for x, v in enumerate(VARIANTS):
        for s, row in evals[v].items():
            left.plot([x - 0.15, x + 0.15], [100 * row["ap_raw"], 100 * row["ap_nms"]], color="0.7", lw=0.8)
        left.plot([x - 0.15, x + 0.15], [100 * table[v]["ap_raw"].mean, 100 * table[v]["ap_nms"].mean], "o-",
                  color="C3" if v.startswith("dual") else "C0")
        g = table[v]["gain"]
        err = None if g.ci is None else [[100 * (g.mean - g.ci[0])], [100 * (g.ci[1] - g.mean)]]
        right.errorbar([x], [100 * g.mean], yerr=err, fmt="o", capsize=3, color="C3" if v.startswith("dual") else "C0")
    left.set_ylabel("AP (left: no NMS, right: NMS)")
    right.axhspan(-100 * EQUIVALENCE, 100 * EQUIVALENCE, color="0.9")
    right.axhline(0, color="0.5", lw=0.8)
    right.set_ylabel("NMS gain (AP points)")
    for ax in (left, right):
        ax.set_xticks(range(len(VARIANTS)), [NAMES[v] for v in VARIANTS], fontsize=8)
    for suffix in ("png", "pdf"):
        fig.savefig(folder / f"nms_free_study.{suffix}", dpi=150)
    plt.close(fig)


def schedules(root: Path, shorter: str = "1x", longer: str = "3x") -> Optional[dict]:
    """What the longer schedule changes, per detector: its NMS gain, AP without NMS and duplicate rate without NMS at
    ``longer`` minus ``shorter``, paired by seed (one seed gives both schedules the same initial weights and, for the
    shorter one's epochs, the same batches). Exploratory: the pre-registered endpoints are each schedule's own
    (``analyse``), so p here is not adjusted. Needs both studies complete (None and what is missing before that)."""
    studies = {s: study_evals(root / s, s) for s in (shorter, longer)}
    if any(e is None for e in studies.values()):
        return None
    seeds = sorted(set(study_seeds(shorter)) & set(study_seeds(longer)))
    command = f"python experiments/nms_free_study.py schedules {root}"
    at = commit()  # one `git rev-parse` for the table and the JSON
    lines = [f"# The NMS-free study: {longer} against {shorter}, paired by seed", "",
             f"`{command}` at commit {at}; seeds {', '.join(map(str, seeds))} of both studies "
             f"([{shorter}]({shorter}/README.md), [{longer}]({longer}/README.md)). Exploratory: not among the "
             "pre-registered endpoints, p unadjusted. Points (rates in %); mean [95% t-interval] over seeds.", "",
             f"| detector | quantity | {shorter} | {longer} | {longer} − {shorter} | p | seeds above 0 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    rows = {}
    for v in VARIANTS:
        for q in ("gain", "ap_raw", "duplicate_rate_raw"):
            short, long_ = ([studies[s][v][seed][q] for seed in seeds] for s in (shorter, longer))
            c = paired_t(long_, short)
            mean_short, mean_long = summarize(short).mean, summarize(long_).mean
            rows[f"{NAMES[v]}: {QUANTITIES[q]}"] = {"delta": c.delta, "ci": c.ci, "p": c.p, "wins": c.wins,
                                                    "n": c.n_variant, shorter: mean_short, longer: mean_long}
            lines.append(f"| {NAMES[v]} | {QUANTITIES[q]} | {100 * mean_short:.2f} | {100 * mean_long:.2f} | "
                         f"{_points(c.delta, c.ci)} | {c.p:.3g} | {c.wins}/{c.n_variant} |")
    result = {"command": command, "commit": at, "seeds": seeds, "shorter": shorter, "longer": longer,
              "comparisons": rows}
    (root / "schedules.json").write_text(json.dumps(result, indent=1) + "\n")
    (root / "schedules.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def seeds(folder: Path) -> dict:
    evals = read_evals(folder)
    rows = []
    for label, *spec in PRIMARY:
        c = compare(evals, *spec)
        needed = None if c.sd in (None, 0.0) else n_for_power(c.delta, c.sd, paired=True)
        rows.append({"comparison": label, "delta": c.delta, "sd": c.sd, "n_needed": needed})
    command = f"python experiments/nms_free_study.py seeds {folder}"
    # one count per schedule (PAIRS); its pilots lie in <schedule>/pilot
    schedule = folder.resolve().parent.name if re.fullmatch(r"\d+x", folder.resolve().parent.name) else "<schedule>"
    return write_seed_count(folder, study="NMS-free study", command=command, commit=commit(), pilot_seeds=evals["dual"],
                            rows=rows, bounds=(SEED_FLOOR, SEED_CEILING),
                            write_into='experiments/nms_free_study.py: PAIRS = {{..., "' + schedule + '": {n}}}')


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for stage, helptext in (("analyse", "the study's tables and figure"), ("seeds", "the study's seed count")):
        sub.add_parser(stage, help=helptext).add_argument(
            "folder", type=Path, help=f"the {'study' if stage == 'analyse' else 'pilot'}'s output folder, holding evals/")
    sub.choices["analyse"].add_argument("--schedule", help="the study's schedule (default: the folder's name)")
    sub.add_parser("study-seeds", help="a schedule's pre-registered seeds, one a line").add_argument("schedule")
    sub.add_parser("schedules", help="3x against 1x, paired by seed (exploratory)").add_argument(
        "root", type=Path, help="the folder holding both studies (1x/, 3x/)")
    args = parser.parse_args(argv)
    if args.stage == "analyse":
        analyse(args.folder, args.schedule)
    elif args.stage == "seeds":
        seeds(args.folder)
    elif args.stage == "schedules":
        schedules(args.root)
    else:
        print("\n".join(map(str, study_seeds(args.schedule))))


if __name__ == "__main__":
    main()
