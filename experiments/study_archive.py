"""A study's finished runs as committed text files, and back into an MLflow store.

    python experiments/study_archive.py export --tracking-uri STORE --experiment claim_study --out DIR
    python experiments/study_archive.py import DIR --tracking-uri NEW_STORE

A study that runs for days on this CPU outlives the machine it started on: its MLflow store and run folders do
not survive a session, the repository does. ``export`` writes one JSON file per FINISHED run of the experiment
(``DIR/<schedule>/<run name>.json``: tags, every param, the history of every ``val/*`` metric, the run's id and
times), small enough to commit. ``import`` logs them into a store as FINISHED runs of the same experiment, tagged
``archive.run_id`` with the original id, so ``python -m analysis.convergence --tracking-uri NEW_STORE`` reads them
exactly as it read the original store; a run already imported is skipped. ``list DIR`` prints the schedule, seed
and assigner of each archived run: how the study's runner skips the seeds already done.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

# The run-level tags MLflow writes itself (user, source, git, run name); kept in the file, not re-set on import
# where MLflow sets its own.
_MLFLOW_OWN = ("mlflow.runName",)
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def export(client: MlflowClient, experiment: str, out: Path) -> list[Path]:
    """One JSON file per FINISHED run of ``experiment``; returns the files written (existing ones are rewritten)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"export: no experiment {experiment!r} in {client.tracking_uri}")
    written = []
    for run in _search_all(client, exp.experiment_id):
        if run.info.status != "FINISHED":
            continue
        data = run.data
        record = {
            "experiment": experiment,
            "run_id": run.data.tags.get("archive.run_id", run.info.run_id),
            "run_name": run.info.run_name,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            "tags": {k: v for k, v in sorted(data.tags.items()) if k != "archive.run_id"},
            "params": dict(sorted(data.params.items())),
            "metrics": {key: [[m.step, m.timestamp, m.value] for m in
                              sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))]
                        for key in sorted(data.metrics) if key.startswith("val/")},
        }
        path = out / _SAFE.sub("_", data.tags.get("schedule", "unknown")) / f"{_SAFE.sub('_', run.info.run_name)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")  # atomic: the other lane may be listing the archive
        partial.write_text(json.dumps(record, indent=1) + "\n")
        partial.replace(path)
        written.append(path)
    return written


def load(archive: Path) -> list[dict]:
    """The archived runs under ``archive`` (sorted by path); a file that is not a run record is an error naming it."""
    records = []
    for path in sorted(archive.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
            assert {"experiment", "run_id", "run_name", "tags", "params", "metrics"} <= set(record)
        except (ValueError, AssertionError):
            raise SystemExit(f"{path}: not a run record of experiments/study_archive.py export") from None
        records.append(record)
    return records


def import_runs(client: MlflowClient, experiment: str, records: Sequence[dict]) -> int:
    """Log each record as a FINISHED run of ``experiment`` unless a run with its ``archive.run_id`` is there."""
    exp = client.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    present = {r.data.tags.get("archive.run_id") for r in _search_all(client, experiment_id)}
    imported = 0
    for record in records:
        if record["run_id"] in present:
            continue
        tags = {k: v for k, v in record["tags"].items() if k not in _MLFLOW_OWN}
        run = client.create_run(experiment_id, run_name=record["run_name"], start_time=record.get("start_time"),
                                tags={**tags, "archive.run_id": record["run_id"]})
        metrics = [Metric(key, value, timestamp, step) for key, points in record["metrics"].items()
                   for step, timestamp, value in points]
        params = [Param(k, v) for k, v in record["params"].items()]
        for start in range(0, max(len(metrics), len(params), 1), 100):  # MLflow's batch limit is 100 params
            client.log_batch(run.info.run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                             tags=[RunTag("archive.imported", "true")] if start == 0 else [])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=record.get("end_time"))
        imported += 1
    return imported


def _search_all(client: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python experiments/study_archive.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="the experiment's FINISHED runs into DIR as JSON files")
    ex.add_argument("--tracking-uri", required=True)
    ex.add_argument("--experiment", required=True)
    ex.add_argument("--out", type=Path, required=True)
    im = sub.add_parser("import", help="DIR's JSON files into a store as FINISHED runs")
    im.add_argument("archive", type=Path)
    im.add_argument("--tracking-uri", required=True)
    im.add_argument("--experiment", default=None, help="default: the experiment each run was exported from")
    ls = sub.add_parser("list", help="print 'schedule seed assigner' per archived run")
    ls.add_argument("archive", type=Path)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.command == "export":
        written = export(MlflowClient(tracking_uri=args.tracking_uri), args.experiment, args.out)
        print(f"exported {len(written)} finished runs of {args.experiment!r} to {args.out}")
    elif args.command == "list":
        for record in load(args.archive):
            tags = record["tags"]
            print(tags.get("schedule", "?"), tags.get("seed", "?"), tags.get("assigner", "?"))
    else:
        if not args.archive.is_dir():
            raise SystemExit(f"import: {args.archive} is not a folder of archived runs")
        records = load(args.archive)
        client = MlflowClient(tracking_uri=args.tracking_uri)
        for experiment in sorted({args.experiment or r["experiment"] for r in records}):
            mine = [r for r in records if (args.experiment or r["experiment"]) == experiment]
            count = import_runs(client, experiment, mine)
            print(f"imported {count} of {len(mine)} archived runs into {experiment!r} at {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
