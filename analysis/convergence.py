"""Does dual assignment make a one-to-one detector converge faster and end better?

    python -m analysis.convergence --sweep-id 3f2a9c1e0b7d --out outputs/analysis
    python -m analysis.convergence --experiment date --tag schedule=1x --tag dataset=synthetic --out DIR

Reads the runs from MLflow (``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the suite's
embedded store: ``python -m date.runtime.tracking``), groups them into variants (assigner x the other group
tags x 3DMF, see analysis/variants.py) and writes to ``--out``:
``convergence.png`` / ``.pdf`` (val AP vs epoch, mean and 95% t-band over seeds, one panel per
schedule), ``results.md`` / ``.tex`` / ``.json`` (final metrics, difference to POTO with Welch's p,
convergence speed-up, and what could not be computed). Exit code 2 with a message on bad input or
when no run matches.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from analysis.compare import build_report
from analysis.runs import GROUP_PARAMS, AnalysisError, query_runs
from analysis.plots import convergence_figure
from analysis.tables import to_json, to_latex, to_markdown
from date.runtime.logs import errors_as_messages
from date.runtime.tracking import resolve_uri


def tag_filter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. --tag schedule=1x")
    return key.strip(), value.strip()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.convergence", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the suite's embedded SQLite store)")
    parser.add_argument("--experiment", default="date", help="MLflow experiment name (tracking.experiment; default: date)")
    parser.add_argument("--sweep-id", action="append", default=[], metavar="ID",
                        help="only runs of this sweep (<sweep dir>/sweep_id); repeat to join several sweeps")
    parser.add_argument("--tag", action="append", default=[], type=tag_filter, metavar="KEY=VALUE",
                        help="only runs with this tag value, e.g. --tag schedule=1x (repeatable; all must hold)")
    parser.add_argument("--group-param", action="append", default=[], metavar="KEY",
                        help=f"a logged param that also splits variants (always: {', '.join(GROUP_PARAMS)})")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the bands (default 0.95)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the figures and tables (created)")
    args = parser.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence {args.confidence}: expected a number between 0 and 1, e.g. 0.95")
    return args


def run(args: argparse.Namespace) -> dict:
    """Query, compute, write; returns the JSON summary."""
    query = query_runs(uri=resolve_uri(args.tracking_uri), experiment=args.experiment, sweep_ids=args.sweep_id,
                       tags=dict(args.tag), group_params=[*GROUP_PARAMS, *args.group_param])
    if not query.records:
        excluded = "".join(f"\n  {e.run_name or e.run_id}: {e.reason}" for e in query.excluded)
        raise AnalysisError(f"No finished runs with val/AP match {query.describe_filters()}."
                            + (f" Matching runs that cannot be used:{excluded}" if excluded else
                               " Check --experiment, --sweep-id and --tag (tags: assigner, schedule, backbone, "
                               "branch_weighting, dataset, seed, sweep_id)."))
    report = build_report(query, confidence=args.confidence)
    args.out.mkdir(parents=True, exist_ok=True)
    convergence_figure(report, args.out)
    markdown = to_markdown(report)
    (args.out / "results.md").write_text(markdown)
    (args.out / "results.tex").write_text(to_latex(report))
    summary = to_json(report)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(markdown)
    print(f"Wrote convergence.png, convergence.pdf, results.md, results.tex, results.json to {args.out}")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    with errors_as_messages({AnalysisError: 2}):
        return run(args)


if __name__ == "__main__":
    main()
    sys.exit(0)
