"""Does dual assignment make a one-to-one detector converge faster and end better?

    python -m analysis.convergence --sweep-id 3f2a9c1e0b7d --out outputs/analysis
    python -m analysis.convergence --experiment date --tag schedule=1x --tag dataset=synthetic --out DIR

Reads the runs from MLflow (``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the suite's
embedded store: ``python -m date.runtime.tracking``), groups them into variants (assigner x the other group
tags x 3DMF x every logged param that differs between the runs, see analysis/variants.py) and writes to
``--out``:
``convergence.png`` / ``.pdf`` (val AP vs epoch, mean and 95% t-band over seeds, one panel per
schedule), ``difference.png`` / ``.pdf`` (val AP minus POTO's per epoch: mean over seed pairs with its
t-band and one line per pair), ``results.md`` / ``.tex`` / ``.json`` (final metrics; per metric the
difference to POTO paired by seed with its 95% interval, paired p, Holm p and seeds won, or Welch's when
the seeds do not pair; the convergence speed-up with a bootstrap interval; seeds needed for 80% power;
and what could not be computed); on CrowdHuman-format data also CrowdHuman's AP, MR^-2, JI and recall, tested the
same way, and ``crowd.png`` / ``.pdf`` (MR^-2 and JI per epoch; analysis/crowd.py). Exit code 2 with a message on bad input, when no run matches, or when
two runs of one variant share a seed (repeats, not seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from analysis import crowd
from analysis.compare import build_report
from analysis.difference_figure import difference_figure
from analysis.runs import GROUP_PARAMS, AnalysisError, query_runs, store_uri
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
                        help="MLflow store: a URI, or the path of an mlflow.db file (default: $MLFLOW_TRACKING_URI, "
                             "else the suite's embedded SQLite store)")
    parser.add_argument("--experiment", default="date", help="MLflow experiment name (tracking.experiment; default: date)")
    parser.add_argument("--sweep-id", action="append", default=[], metavar="ID",
                        help="only runs of this sweep (<sweep dir>/sweep_id); repeat to join several sweeps")
    parser.add_argument("--tag", action="append", default=[], type=tag_filter, metavar="KEY=VALUE",
                        help="only runs with this tag value, e.g. --tag schedule=1x (repeatable; all must hold)")
    parser.add_argument("--group-param", action="append", default=[], metavar="KEY",
                        help=f"a logged param that always splits variants ({', '.join(GROUP_PARAMS)} does; any "
                             "other param splits them when its values differ, bookkeeping params aside)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the bands (default 0.95)")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="B",
                        help="bootstrap resamples of the speed-up's interval (default 2000; fixed RNG seed)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the figures and tables (created)")
    args = parser.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence {args.confidence}: expected a number between 0 and 1, e.g. 0.95")
    if args.bootstrap < 1:
        parser.error(f"--bootstrap {args.bootstrap}: expected a number of resamples >= 1, e.g. 2000")
    return args


def tracking_uri(given: Optional[str]) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the embedded store; a plain file path is a SQLite store."""
    if given:
        return store_uri(given)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return store_uri(os.environ["MLFLOW_TRACKING_URI"], option="$MLFLOW_TRACKING_URI")
    return resolve_uri(None)


def run(args: argparse.Namespace) -> dict:
    """Query, compute, write; returns the JSON summary."""
    query = query_runs(uri=tracking_uri(args.tracking_uri), experiment=args.experiment, sweep_ids=args.sweep_id,
                       tags=dict(args.tag), group_params=[*GROUP_PARAMS, *args.group_param])
    if not query.records:
        excluded = "".join(f"\n  {e.run_name or e.run_id}: {e.reason}" for e in query.excluded)
        raise AnalysisError(f"No finished runs with val/AP match {query.describe_filters()}."
                            + (f" Matching runs that cannot be used:{excluded}" if excluded else
                               " Check --experiment, --sweep-id and --tag (tags: assigner, schedule, backbone, "
                               "branch_weighting, dataset, seed, sweep_id)."))
    report = build_report(query, confidence=args.confidence, bootstrap=args.bootstrap)
    args.out.mkdir(parents=True, exist_ok=True)
    convergence_figure(report, args.out)
    difference_figure(report, args.out)
    markdown, summary = to_markdown(report), to_json(report)
    written = "convergence.png, convergence.pdf, difference.png, difference.pdf"
    crowd_results = crowd.crowd_results(report)  # runs on CrowdHuman-format data only
    if crowd_results:
        markdown += "\n" + crowd.to_markdown(crowd_results)
        summary["crowd"] = crowd.to_json(crowd_results)
        crowd.crowd_figure(report, crowd_results, args.out)
        written += ", crowd.png, crowd.pdf"
    (args.out / "results.md").write_text(markdown)
    (args.out / "results.tex").write_text(to_latex(report))
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    print(markdown)
    print(f"Wrote {written}, results.md, results.tex, results.json to {args.out}")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    with errors_as_messages({AnalysisError: 2}):
        return run(args)


if __name__ == "__main__":
    main()
    sys.exit(0)
