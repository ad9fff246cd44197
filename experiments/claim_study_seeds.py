"""The claim study's seed counts from its pilot, by the rule written in experiments/README.md before the pilot ran:

    python experiments/claim_study_seeds.py experiments/results/claim_study/pilot/results.json \
        --out experiments/results/claim_study/pilot

Per schedule: n = the pairs a paired t-test needs for 80% power at two-sided alpha 0.05 for the pilot's mean
DATE - POTO difference in final AP with the sd of its differences (analysis.convergence's power analysis, in
the pilot's results.json), clamped to [8, 25] pairs at 1x and [5, 10] at 3x. Writes seed_counts.md / .json
(with the command and the commit) and prints the two lines to put into experiments/claim_study.sh.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BOUNDS = {"1x": (8, 25), "3x": (5, 10)}  # pairs: the floor and the CPU budget's ceiling (experiments/README.md)


def seed_count(power: dict, schedule: str) -> tuple[int, str]:
    """(n, why) for one schedule from its DATE-vs-POTO power analysis (results.json's ``power_ap``)."""
    low, high = BOUNDS[schedule]
    if not power or "missing" in power:
        return high, f"no power analysis ({(power or {}).get('missing', 'none')}): the ceiling"
    needed = power["n_needed"]
    if needed is None:
        return high, "no n reaches 80% power for the pilot's difference: the ceiling"
    n = min(max(needed, low), high)
    why = "as computed" if n == needed else ("raised to the floor" if n > needed else "capped at the ceiling")
    return n, f"{needed} pairs needed, {why}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the pilot's results.json (python -m analysis.convergence)")
    parser.add_argument("--schedules", nargs="+", choices=sorted(BOUNDS), default=sorted(BOUNDS),
                        help="the schedules whose pilot is complete (default: both)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    variants = json.loads(args.results.read_text())["variants"]
    rows = {}
    for schedule in args.schedules:
        dual = [v for v in variants if v["schedule"] == schedule and v["groups"].get("assigner") == "dual"]
        if len(dual) != 1:
            parser.error(f"{args.results}: expected one DATE (dual) variant at {schedule}, found {len(dual)}")
        power = dual[0]["power_ap"]
        n, why = seed_count(power, schedule)
        rows[schedule] = {"n": n, "why": why, "pilot_pairs": dual[0]["n"], "pilot_seeds": dual[0]["seeds"],
                          "effect": power.get("effect") if power else None, "sd": power.get("sd") if power else None,
                          "n_needed": power.get("n_needed") if power else None, "bounds": BOUNDS[schedule]}
    command = "python experiments/claim_study_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "commit": commit(), "schedules": rows}
    lines = ["# The claim study's seed counts, from its pilot", "",
             f"`{command}` at commit {result['commit']}. Rule (experiments/README.md, written before the pilot): "
             "pairs for 80% power at two-sided α 0.05, the pilot's mean difference and sd taken as true, clamped.",
             "", "| schedule | pilot pairs | DATE − POTO (AP ×100) | sd of the differences | pairs needed | "
             "bounds | n |", "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for schedule, r in rows.items():
        effect = "–" if r["effect"] is None else f"{100 * r['effect']:+.2f}"
        sd = "–" if r["sd"] is None else f"{100 * r['sd']:.2f}"
        lines.append(f"| {schedule} | {r['pilot_pairs']} | {effect} | {sd} | {r['n_needed'] or '–'} | "
                     f"{r['bounds'][0]}-{r['bounds'][1]} | {r['n']} ({r['why']}) |")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "seed_counts" + ("" if len(rows) == len(BOUNDS) else "_" + "_".join(rows))
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    names = {"1x": "N1", "3x": "N3"}
    print("\nexperiments/claim_study.sh:\n" + "\n".join(f"{names[s]}={r['n']}  # pre-registered: pairs at {s}"
                                                         for s, r in rows.items()))
    return result


if __name__ == "__main__":
    main()
