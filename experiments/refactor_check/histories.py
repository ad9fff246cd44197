"""Metric histories of a refactor check (experiments/refactor_check/run.sh).

    python experiments/refactor_check/histories.py dump <mlflow.db>          # -> JSON on stdout
    python experiments/refactor_check/histories.py compare <before dir> <after dir> [KEY=VALUE ...]

``compare``: every metric a run logged before must be identical, step for step and to the last bit, after
(what measures the machine rather than the method is left out: img/s, and MLflow's system/* samples of CPU,
memory and disk); metrics only the later code logs are listed as new. Exit code 1 if any
history differs. The KEY=VALUE arguments are run.sh's EXTRA pins (a default that changed on purpose, pinned to its
former value): a run's name lists the overrides it was given, and the pins are left out of the names compared.
"""
import json
import sqlite3
import sys


def dump(db: str) -> dict:
    con = sqlite3.connect(db)
    names = dict(con.execute("select run_uuid, name from runs"))
    out: dict = {}
    for run, key, step, value in con.execute("select run_uuid, key, step, value from metrics order by run_uuid, key, step"):
        if key != "train/img_per_s" and not key.startswith("system/"):
            out.setdefault(names[run], {}).setdefault(key, []).append([step, value])
    return out


def without_pins(runs: dict, pins: list[str]) -> dict:
    """``runs`` with the ``pins`` (KEY=VALUE overrides) left out of their names (tokens separated by spaces)."""
    return {" ".join(t for t in name.split(" ") if t not in pins): metrics for name, metrics in runs.items()}


def compare(before: dict, after: dict) -> bool:
    same = set(before) == set(after)
    if not same:
        print(f"runs differ: {sorted(set(before) ^ set(after))}")
    for run in sorted(set(before) & set(after)):
        differ = [k for k in sorted(before[run]) if before[run][k] != after[run].get(k)]
        new = sorted(set(after[run]) - set(before[run]))
        points = sum(len(v) for v in before[run].values())
        print(f"{run[:64]:<64} {len(before[run]):2d} metrics, {points:3d} points: "
              f"{'DIFFER ' + str(differ) if differ else 'IDENTICAL'}" + (f"; new: {', '.join(new)}" if new else ""))
        same &= not differ
    return same


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        print(json.dumps(dump(sys.argv[2]), indent=0, sort_keys=True))
    else:
        a, b = (without_pins(json.load(open(f"{d}/metrics.json")), sys.argv[4:]) for d in sys.argv[2:4])
        sys.exit(0 if compare(a, b) else 1)
