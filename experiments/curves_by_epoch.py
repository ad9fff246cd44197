"""The per-epoch mean val AP curves of a committed ``analysis.convergence`` results.json as a table, with the
epochs at which each variant's mean is above or below its baseline's: ``curves_by_epoch.md`` next to it.

    python experiments/curves_by_epoch.py experiments/results/convergence_synthetic_main_regime/1x/results.json

The README's statements about the curves ("DATE's mean is above POTO's from epoch N on", "FCOS on top from
epoch N") are read from these tables. Reads only the file (``variants[].curve``: the mean over seeds at each
epoch); no MLflow store is needed. The written file names the command and the commit it was made at.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OUT_NAME = "curves_by_epoch.md"


def commit_of(repo: Path, paths: list[Path]) -> str:
    """HEAD's short hash, marked '+ uncommitted changes' when this script or an input differs from HEAD."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *map(str, paths)], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


def epochs_list(epochs: list[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> '1-3, 5, 7-8'; [] -> 'none'."""
    if not epochs:
        return "none"
    runs, start, prev = [], epochs[0], epochs[0]
    for e in epochs[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if e is not None:
            start = prev = e
    return ", ".join(runs)


def from_on(epochs: list[int], above: list[int]) -> str:
    """'above at every epoch from epoch N on' (N: the first epoch of the run of 'above' that ends the curve),
    or 'not above at the last epoch'."""
    first = None
    for e in reversed(epochs):
        if e not in above:
            break
        first = e
    return f"above at every epoch from epoch {first} on" if first is not None else "not above at the last epoch"


def schedule_section(schedule: str, variants: list[dict]) -> list[str]:
    """The table and the comparison lines of one schedule's variants (all curves over the same epochs)."""
    epochs = variants[0]["curve"]["epochs"]
    means = {v["label"]: dict(zip(v["curve"]["epochs"], v["curve"]["mean"])) for v in variants}
    labels = list(means)
    lines = [f"## Schedule {schedule}", "",
             "val/AP (points) by epoch, mean over seeds (n per variant: " +
             ", ".join(f"{v['label']} {v['n']}" for v in variants) + "); highest = the variant with the highest mean.",
             "", "| epoch | " + " | ".join(labels) + " | highest |",
             "| ---: | " + " | ".join("---:" for _ in labels) + " | --- |"]
    for e in epochs:
        row = {label: means[label].get(e) for label in labels}
        best = max((label for label in labels if row[label] is not None), key=lambda label: row[label])
        cells = " | ".join("" if row[label] is None else f"{100 * row[label]:.2f}" for label in labels)
        lines.append(f"| {e} | {cells} | {best} |")
    lines += ["", "Each variant against its baseline (the difference of the means, in points, at every epoch):", ""]
    for v in variants:
        base = v.get("baseline")
        if not base or base == v["label"] or base not in means:
            continue
        diff = {e: 100 * (means[v["label"]][e] - means[base][e]) for e in epochs}
        above = [e for e in epochs if diff[e] > 0]
        below = [e for e in epochs if diff[e] < 0]
        lines.append(f"- {v['label']} − {base}: above at epochs {epochs_list(above)}; below at epochs "
                     f"{epochs_list(below)}; {from_on(epochs, above)}. "
                     "Differences: " + ", ".join(f"{e}: {diff[e]:+.3f}" for e in epochs) + ".")
    return lines + [""]


def write(results: Path, repo: Path, command: str) -> Path:
    data = json.loads(results.read_text())
    by_schedule: dict[str, list[dict]] = {}
    for v in data["variants"]:
        by_schedule.setdefault(v["schedule"], []).append(v)
    rel = results.resolve().relative_to(repo)
    lines = ["# Mean val AP curves by epoch", "",
             f"Made with `{command}` at commit {commit_of(repo, [rel, Path(__file__).resolve().relative_to(repo)])},"
             f" from `{rel.name}` in this folder ({data.get('filters', 'filters not recorded')}).", ""]
    for schedule, variants in by_schedule.items():
        lines += schedule_section(schedule, variants)
    out = results.parent / OUT_NAME
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files written by analysis.convergence")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    for results in args.results:
        command = f"python experiments/curves_by_epoch.py {results.resolve().relative_to(repo)}"
        print(write(results, repo, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
