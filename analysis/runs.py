"""Query MLflow for finished training runs and return them as plain records (no MLflow types leak out).

A run becomes a :class:`RunRecord`: its group tags, its seed, every logged param, the ``val/AP`` curve
(step = completed epochs) and the final value of each COCO metric. Runs that cannot be used (still
RUNNING, FAILED, KILLED, or without any ``val/AP``) are returned separately with the reason, so the
report can list them. :func:`store_uri` reads ``--tracking-uri``: a plain path to a file is a SQLite store.
"""
from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

# GROUP_TAGS: the config-group tags date.train writes on every run
from date.runtime.tracking import GROUP_TAGS, TrackingError, check_reachable

# The COCO numbers reported per variant (keys of date.coco_eval.STAT_NAMES, logged as val/<name>).
FINAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# CrowdHuman's metrics (date.coco_eval.crowd_score), logged as val/crowd/<name> on CrowdHuman-format data only
CROWD_METRICS = ("crowd/AP", "crowd/mMR", "crowd/JI", "crowd/recall")
# Params that also define a variant (DATE-F-3DMF vs DATE-F); --group-param adds more.
GROUP_PARAMS = ("model.use_3dmf",)
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.\-/ ]+$")


class AnalysisError(RuntimeError):
    """Input the analysis cannot work with (no store, no experiment, no runs): a message for the user."""


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as plain Python values.

    ``groups`` maps each grouping key (a tag name, or ``params.<key>`` of --group-param) to its value ("" when
    absent); ``params`` holds every param the run logged (date.train logs its whole resolved config);
    ``curve`` maps completed epochs to val/AP; ``final`` maps metric names (AP, AP50, ...) to the value
    at the run's last evaluation; ``missing`` maps the final metrics it lacks to why (not logged at
    that evaluation, or COCOeval's -1: the split has no ground truth of that size); ``crowd_curves`` maps each
    CrowdHuman metric the run logged (crowd/AP, ...; none on other data) to its {epoch: value}.
    """

    run_id: str
    run_name: str
    seed: str
    groups: Mapping[str, str]
    curve: Mapping[int, float]
    final: Mapping[str, float]
    missing: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    sweep_id: str = ""  # the sweep_id tag ("" outside a sweep), to tell repeated runs apart in messages
    crowd_curves: Mapping[str, Mapping[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExcludedRun:
    run_id: str
    run_name: str
    status: str
    reason: str


@dataclass
class RunQuery:
    """What was asked for (kept to name the filters in messages) and what came back."""

    uri: str
    experiment: str
    sweep_ids: Sequence[str] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    records: list[RunRecord] = field(default_factory=list)
    excluded: list[ExcludedRun] = field(default_factory=list)

    def describe_filters(self) -> str:
        parts = [f"experiment {self.experiment!r} in {self.uri}"]
        if self.sweep_ids:
            parts.append("sweep_id " + " or ".join(self.sweep_ids))
        parts += [f"tag {k}={v}" for k, v in self.tags.items()]
        return ", ".join(parts)


def filter_string(*, sweep_id: Optional[str], tags: Mapping[str, str]) -> str:
    """MLflow search filter for one sweep id and the tag filters (all must hold)."""
    clauses = []
    for key, value in ([("sweep_id", sweep_id)] if sweep_id else []) + list(tags.items()):
        if not _TAG_KEY.match(key):
            raise AnalysisError(f"--tag {key}={value}: the tag name may hold letters, digits, '_', '.', '-', '/' "
                                "and spaces only.")
        quoted = str(value).replace("'", "\\'")
        clauses.append(f"tags.`{key}` = '{quoted}'")
    return " and ".join(clauses)


def store_uri(text: str, *, option: str = "--tracking-uri") -> str:
    """A tracking URI as given, except a plain path (no scheme): an existing file is the SQLite store
    ``sqlite:////abs/path`` (MLflow would take the path for its retired file-store folder and fail)."""
    if urllib.parse.urlsplit(text).scheme or text == "databricks":  # URIs, and MLflow's one bare-word store
        return text
    path = Path(text).expanduser()
    if path.is_file():
        return "sqlite:///" + str(path.resolve())
    what = "is a folder" if path.is_dir() else "does not exist"
    raise AnalysisError(f"{option} {text}: {path.absolute()} {what}. Give the MLflow SQLite file the runs were "
                        "logged to (e.g. ~/.local/share/date/mlflow.db, which python -m date.runtime.tracking "
                        "prints as a URI), a sqlite:///<file> URI or an http://host:port server.")


def check_store(uri: str) -> None:
    """A clear error for a store that is not there, instead of MLflow creating an empty one or retrying."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser()
        if not path.exists():
            raise AnalysisError(f"No MLflow store at {path} ({uri}). Train first (python -m date.train), or pass "
                                "--tracking-uri / set MLFLOW_TRACKING_URI to the store the runs were logged to.")
    else:
        try:
            check_reachable(uri)
        except TrackingError as exc:
            raise AnalysisError(f"{exc} For the analysis: pass --tracking-uri with a reachable store.") from None


def query_runs(*, uri: str, experiment: str, sweep_ids: Sequence[str] = (), tags: Mapping[str, str] | None = None,
               group_params: Sequence[str] = GROUP_PARAMS) -> RunQuery:
    """All runs of ``experiment`` matching every filter (any of ``sweep_ids``), split into usable records
    and excluded runs. Raises AnalysisError when the store or the experiment does not exist."""
    from mlflow.tracking import MlflowClient

    query = RunQuery(uri=uri, experiment=experiment, sweep_ids=list(sweep_ids), tags=dict(tags or {}))
    check_store(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"--experiment {experiment}: no such experiment in {uri}. Experiments there: "
                            f"{', '.join(names) or 'none'}.")
    runs, seen = [], set()
    for sweep_id in list(sweep_ids) or [None]:
        runs += [r for r in _search_all(client, exp.experiment_id, filter_string(sweep_id=sweep_id, tags=query.tags))
                 if r.info.run_id not in seen and not seen.add(r.info.run_id)]
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        record_or_reason = _to_record(client, run, group_params)
        if isinstance(record_or_reason, RunRecord):
            query.records.append(record_or_reason)
        else:
            query.excluded.append(ExcludedRun(run.info.run_id, run.info.run_name or "", run.info.status,
                                              record_or_reason))
    return query


def _search_all(client, experiment_id: str, filter_str: str) -> list:
    """Every page of ``search_runs`` (active runs only)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_str, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _history(client, run_id: str, key: str) -> dict[int, float]:
    """{step: value} of one metric. A resumed run never re-logs a step (date.runtime.tracking); if a step
    still repeats, the latest value wins."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in history}


def _to_record(client, run, group_params: Sequence[str]) -> RunRecord | str:
    """The run as a record, or the reason it cannot be used."""
    info, data = run.info, run.data
    if info.status != "FINISHED":
        return f"status {info.status} (only FINISHED runs are analysed)"
    if "val/AP" not in data.metrics:
        return "no val/AP logged"
    curve = _history(client, info.run_id, "val/AP")
    last_epoch = max(curve)
    final, missing = {}, {}
    for name in FINAL_METRICS:
        values = curve if name == "AP" else _history(client, info.run_id, f"val/{name}")
        if last_epoch not in values:
            missing[name] = f"not logged at the last evaluation (epoch {last_epoch})"
        elif values[last_epoch] < 0:  # COCOeval's marker, not a score: averaging it in would be wrong
            missing[name] = "-1 from COCOeval (no ground truth of that size in the split)"
        else:
            final[name] = values[last_epoch]
    groups = {tag: data.tags.get(tag, "") for tag in GROUP_TAGS}
    groups.update({f"params.{key}": data.params.get(key, "") for key in group_params})
    crowd = {name: _history(client, info.run_id, f"val/{name}") for name in CROWD_METRICS
             if f"val/{name}" in data.metrics}
    return RunRecord(run_id=info.run_id, run_name=info.run_name or "", seed=data.tags.get("seed", "?"),
                     groups=groups, curve=curve, final=final, missing=missing, params=dict(data.params),
                     sweep_id=data.tags.get("sweep_id", ""), crowd_curves=crowd)
