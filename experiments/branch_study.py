"""The branch study's data and tables (experiments/README.md, "branch_study"; issue 23, item 4): which of the
shared parts, or the level ranges, or the head width makes DATE's branches pull against each other?

    python experiments/branch_study.py record <run dir> --seed S --variant V --commit C --out runs/sS_V.json
    python experiments/branch_study.py analyse experiments/results/branch_study     # results.md / .json / .png

``record`` reads one finished run of experiments/branch_study.sh: its final evaluation on all val images
(``eval_results.json``'s last entry: the inference branch; for DATE also ``val/o2m/*``, its o2m branch with NMS, or
``--o2m-eval``, the JSON of ``python -m date.evaluate branch=o2m`` on a reused run) into one JSON, the study's data.
``analyse`` pairs the runs by seed (analysis.stats.paired_t: mean difference, 95% t-interval, p): each DATE
variant's o2o branch against POTO and its o2m branch against FCOS alone in the same regime. The primary family
of each part is Holm-adjusted on its own; a part is analysed only when every run of its pre-registered seeds (SEEDS)
is recorded: until then its tables say how many are, and no number of it is shown.
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

from analysis.stats import holm, paired_t, summarize  # noqa: E402

NAMES = {"o2o": "POTO", "dual": "DATE (the paper)", "o2m": "FCOS", "dual_towers": "DATE, share_towers=false",
         "dual_scales": "DATE, share_scales=false", "o2m_ranges": "FCOS, ranges /2", "dual_ranges": "DATE, ranges /2",
         "o2o_256": "POTO, 256 ch", "dual_256": "DATE, 256 ch", "o2m_256": "FCOS, 256 ch"}
PARTS = {"A": ("o2o", "dual", "o2m", "dual_towers", "dual_scales", "o2m_ranges", "dual_ranges"),
         "B": ("o2o_256", "dual_256", "o2m_256")}
# (label, variant, its branch, baseline, the baseline's branch): variant - baseline, paired by seed.
# "o2o" reads the run's inference branch (DATE's and POTO's o2o, FCOS's o2m + NMS); "o2m" DATE's o2m branch + NMS.
PRIMARY = {"A": [("DATE o2o − POTO", "dual", "o2o", "o2o", "o2o"),
                 ("DATE share_towers=false o2o − POTO", "dual_towers", "o2o", "o2o", "o2o"),
                 ("DATE share_scales=false o2o − POTO", "dual_scales", "o2o", "o2o", "o2o"),
                 ("DATE ranges /2 o2o − POTO", "dual_ranges", "o2o", "o2o", "o2o"),
                 ("DATE o2m − FCOS", "dual", "o2m", "o2m", "o2o"),
                 ("DATE share_towers=false o2m − FCOS", "dual_towers", "o2m", "o2m", "o2o"),
                 ("DATE share_scales=false o2m − FCOS", "dual_scales", "o2m", "o2m", "o2o"),
                 ("DATE ranges /2 o2m − FCOS ranges /2", "dual_ranges", "o2m", "o2m_ranges", "o2o")],
           "B": [("DATE 256 ch o2o − POTO 256 ch", "dual_256", "o2o", "o2o_256", "o2o"),
                 ("DATE 256 ch o2m − FCOS 256 ch", "dual_256", "o2m", "o2m_256", "o2o")]}
# what each switch changes against DATE as the paper builds it (the cause), and the regimes' own effects
SECONDARY = {"A": [("share_towers=false: change of DATE's o2o", "dual_towers", "o2o", "dual", "o2o"),
                   ("share_scales=false: change of DATE's o2o", "dual_scales", "o2o", "dual", "o2o"),
                   ("ranges /2: change of DATE's o2o", "dual_ranges", "o2o", "dual", "o2o"),
                   ("share_towers=false: change of DATE's o2m", "dual_towers", "o2m", "dual", "o2m"),
                   ("share_scales=false: change of DATE's o2m", "dual_scales", "o2m", "dual", "o2m"),
                   ("ranges /2: change of DATE's o2m", "dual_ranges", "o2m", "dual", "o2m"),
                   ("ranges /2: change of FCOS", "o2m_ranges", "o2o", "o2m", "o2o")],
             "B": [("256 ch: change of POTO", "o2o_256", "o2o", "o2o", "o2o"),
                   ("256 ch: change of DATE's o2o", "dual_256", "o2o", "dual", "o2o"),
                   ("256 ch: change of DATE's o2m", "dual_256", "o2m", "dual", "o2m"),
                   ("256 ch: change of FCOS", "o2m_256", "o2o", "o2m", "o2o")]}
RUN_FILE = re.compile(r"s(\d+)_(.+)\.json")
# Pre-registered before the study's first run (experiments/README.md, "branch_study": the power analysis), for both
# parts; experiments/branch_study.sh reads them from here (`branch_study.py seeds`). None added after looking at p.
SEEDS = tuple(range(8))


def record(run_dir: Path, *, seed: int, variant: str, commit: str, out: Path, o2m_eval: Optional[Path]) -> dict:
    """One run's final numbers (all val images) as the study's JSON; refuses a run that did not end its evaluation."""
    history_file = run_dir / "eval_results.json"
    if not history_file.is_file():
        sys.exit(f"{history_file}: missing; {run_dir} is not a finished run of date.train (rerun the study)")
    final = json.loads(history_file.read_text())[-1]
    o2m = {k[len("val/o2m/"):]: v for k, v in final.items() if k.startswith("val/o2m/")}
    if not o2m and o2m_eval is not None:
        o2m = json.loads(o2m_eval.read_text())
    if variant.startswith("dual") and not o2m:
        sys.exit(f"{run_dir}: a DATE run without its o2m branch's evaluation (eval_o2m_branch=true, or "
                 "`python -m date.evaluate branch=o2m out=...` passed as --o2m-eval)")
    row = {"seed": seed, "variant": variant, "commit": commit, "run_dir": str(run_dir), "epoch": final["epoch"],
           "images": final["images"], "o2o": {k[len("val/"):]: v for k, v in final.items()
                                              if k.startswith("val/") and not k.startswith("val/o2m/")},
           "o2m": o2m or None}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1) + "\n")
    return row


def read_runs(folder: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: record}} of ``folder/runs``; refuses files that are not the study's."""
    runs: dict[str, dict[int, dict]] = {v: {} for part in PARTS.values() for v in part}
    for path in sorted((folder / "runs").glob("*.json")):
        match = RUN_FILE.fullmatch(path.name)
        if match is None or match.group(2) not in runs:
            sys.exit(f"{path}: not a run of the study (runs/s<seed>_<{'|'.join(runs)}>.json)")
        runs[match.group(2)][int(match.group(1))] = json.loads(path.read_text())
    return runs


def recorded_runs(runs, part: str, seeds: tuple[int, ...]) -> int:
    """How many of the part's runs (its variants x ``seeds``) are recorded; exits on a seed not pre-registered."""
    extra = sorted({s for v in PARTS[part] for s in runs[v]} - set(seeds))
    if extra:
        sys.exit(f"part {part}: runs of seeds {extra}, which are not the pre-registered {list(seeds)} "
                 "(experiments/branch_study.py SEEDS): remove them; seeds are never added after looking at p")
    return sum(s in runs[v] for v in PARTS[part] for s in seeds)


def value(row: dict, branch: str) -> float:
    return row[branch]["AP"]


def compare(runs, seeds, variant: str, branch: str, baseline: str, base_branch: str):
    return paired_t([value(runs[variant][s], branch) for s in seeds],
                    [value(runs[baseline][s], base_branch) for s in seeds])


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip() or "unknown"


def _points(delta: float, ci) -> str:
    return f"{100 * delta:+.2f}" + ("" if ci is None else f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]")


def _images(runs) -> str:
    return " / ".join(map(str, sorted({row["images"] for seeds in runs.values() for row in seeds.values()})))


def _mean_std(summary) -> str:
    return f"{100 * summary.mean:.2f}" + ("" if summary.std is None else f" ± {100 * summary.std:.2f}")


def part_tables(runs, part: str, seeds: list[int]) -> tuple[list[str], dict]:
    lines = [f"## Part {part}: seeds {', '.join(map(str, seeds))}, paired", "",
             "| run | AP (inference branch) | DATE's o2m branch + NMS | trained at |", "| --- | ---: | ---: | --- |"]
    for v in PARTS[part]:
        ap = summarize([value(runs[v][s], "o2o") for s in seeds])
        o2m = summarize([value(runs[v][s], "o2m") for s in seeds]) if v.startswith("dual") else None
        commits = ", ".join(sorted({runs[v][s]["commit"] for s in seeds}))
        lines.append(f"| {NAMES[v]} | {_mean_std(ap)} | {'–' if o2m is None else _mean_std(o2m)} | {commits} |")
    if len(seeds) < 2:
        return lines + ["", "(a paired comparison needs two seeds or more)"], {}
    primary = [compare(runs, seeds, *row[1:]) for row in PRIMARY[part]]
    adjusted = holm([c.p for c in primary])
    lines += ["", "Paired differences in AP points, mean [95% t-interval]; p of the paired t-test, the primary family "
              "Holm-adjusted (marked *):", "", "| comparison | Δ AP [95% CI] | p | seeds above 0 |",
              "| --- | ---: | ---: | ---: |"]
    rows = {}
    for (label, *spec), c, p_holm in [*zip(PRIMARY[part], primary, adjusted),
                                      *((row, compare(runs, seeds, *row[1:]), None) for row in SECONDARY[part])]:
        rows[label] = {"delta": c.delta, "ci": c.ci, "p": c.p, "p_holm": p_holm, "wins": c.wins, "n": c.n_variant,
                       "primary": p_holm is not None, "branch": spec[1]}
        p = f"{c.p:.3g}" if p_holm is None else f"{p_holm:.3g}*"
        lines.append(f"| {label} | {_points(c.delta, c.ci)} | {p} | {c.wins}/{c.n_variant} |")
    return lines, rows


def analyse(folder: Path, seeds: tuple[int, ...] = SEEDS) -> dict:
    runs = read_runs(folder)
    command = f"python experiments/branch_study.py analyse {folder}"
    lines = ["# The branch study: what makes DATE's branches pull against each other", "",
             f"`{command}` at commit {commit()}. Final val AP on all {_images(runs)} val images, in points; "
             "mean ± sd over seeds.", ""]
    result = {"command": command, "commit": commit(), "parts": {}}
    for part in PARTS:
        done, total = recorded_runs(runs, part, seeds), len(PARTS[part]) * len(seeds)
        if done < total:  # every comparison is paired over all the pre-registered seeds: nothing before
            state = "not run yet" if done == 0 else f"in progress, {done} of its {total} runs recorded"
            lines += [f"## Part {part}: {state} (experiments/branch_study.sh {part}; analysed when all are)", ""]
            continue
        part_lines, rows = part_tables(runs, part, list(seeds))
        lines += part_lines + [""]
        result["parts"][part] = {"seeds": list(seeds), "comparisons": rows}
    if not result["parts"]:
        sys.exit(f"{folder / 'runs'}: no part has all its runs; run experiments/branch_study.sh A first")
    (folder / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "results.md").write_text("\n".join(lines))
    figure(result, folder)
    print("\n".join(lines))
    return result


def figure(result: dict, folder: Path) -> None:
    """Each comparison's paired ΔAP with its 95% interval: left the o2o branches against POTO, right the o2m
    branches against FCOS alone; filled markers are the primary family."""
    rows = [(label, row) for part in result["parts"].values() for label, row in part["comparisons"].items()]
    o2o = [(label, row) for label, row in rows if row["branch"] == "o2o"]
    o2m = [(label, row) for label, row in rows if row["branch"] == "o2m"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * max(len(o2o), len(o2m)) + 1.2), constrained_layout=True)
    for ax, group, title in ((axes[0], o2o, "inference branch (o2o; FCOS: o2m + NMS)"),
                             (axes[1], o2m, "DATE's o2m branch + NMS")):
        for y, (label, row) in enumerate(group):
            err = None if row["ci"] is None else [[100 * (row["delta"] - row["ci"][0])],
                                                  [100 * (row["ci"][1] - row["delta"])]]
            color = "C3" if row["primary"] else "C0"
            ax.errorbar([100 * row["delta"]], [y], xerr=err, fmt="o", capsize=3, color=color,
                        mfc=color if row["primary"] else "white")
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_yticks(range(len(group)), [label for label, _ in group], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("paired Δ AP (points), 95% interval")
        ax.set_title(title, fontsize=9)
    fig.suptitle("filled: primary endpoints (Holm within each part); open: secondary, unadjusted", fontsize=8)
    for suffix in ("png", "pdf"):
        fig.savefig(folder / f"branch_study.{suffix}", dpi=150)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    rec = sub.add_parser("record", help="one finished run -> the study's JSON")
    rec.add_argument("run_dir", type=Path)
    rec.add_argument("--seed", type=int, required=True)
    rec.add_argument("--variant", choices=[v for part in PARTS.values() for v in part], required=True)
    rec.add_argument("--commit", required=True, help="the commit the run was trained at")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--o2m-eval", type=Path, help="python -m date.evaluate branch=o2m's JSON (a reused run)")
    ana = sub.add_parser("analyse", help="the tables and the figure of every complete part")
    ana.add_argument("folder", type=Path, help="the study's output folder, holding runs/")
    sub.add_parser("seeds", help="print the pre-registered seeds, one a line (for branch_study.sh)")
    args = parser.parse_args(argv)
    if args.stage == "record":
        record(args.run_dir, seed=args.seed, variant=args.variant, commit=args.commit, out=args.out,
               o2m_eval=args.o2m_eval)
    elif args.stage == "seeds":
        print("\n".join(map(str, SEEDS)))
    else:
        analyse(args.folder)


if __name__ == "__main__":
    main()
