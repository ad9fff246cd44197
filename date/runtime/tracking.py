"""MLflow tracking: where the store is, one run per job, and metrics that survive outages and restarts.

Store (first match wins):
  1. the ``tracking.uri`` config key,
  2. ``$MLFLOW_TRACKING_URI``,
  3. ``sqlite:///$DATE_HOME/mlflow.db`` with artifacts in ``$DATE_HOME/mlartifacts``;
     ``DATE_HOME`` defaults to ``~/.local/share/date``. This place does not depend on the directory
     a run is launched from. ``python -m date.runtime.tracking`` prints the URI, e.g. for
     ``mlflow ui --backend-store-uri "$(python -m date.runtime.tracking)"``.

Metric delivery: :class:`RunTracker` buffers metrics and sends them with ``log_batch``; a batch that
fails (server down) stays buffered and is retried later, and whatever is still unsent is stored in
the checkpoint. On resume, (key, step) pairs already in the run's history are not logged again, so
the history has no duplicated and no missing steps.

A run is named after what ran (``dual-1x-resnet18-s0 optim.lr=0.001``: :func:`mlflow_run_name`), carries
the tags ``mlflow.start_run`` would set (user, source, git), MLflow's ``system/*`` metrics
(``tracking.system_metrics``) and its train / val datasets as inputs (:func:`dataset_inputs`). A password
in an ``http://user:password@host`` URI is masked wherever the URI is logged (:func:`mask_credentials`).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from omegaconf import DictConfig

from date.runtime.logs import mask_credentials
from date.runtime.outputs import sqlite_problem
from date.runtime.sweep_guard import LaunchCheck

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
SWEEP_ID_FILE = "sweep_id"
# Config groups whose chosen option is tagged on every run (the analysis groups runs by them).
GROUP_TAGS = ("assigner", "schedule", "backbone", "branch_weighting", "dataset")
PROBE_TIMEOUT_S = 5.0
# Config groups that make up the run name, then "s<seed>": dual-1x-resnet18-s0.
NAME_GROUPS = ("assigner", "schedule", "backbone")
RUN_NAME_MAX = 250  # MLflow's SQL stores hold run names in a VARCHAR(250)
# MLflow's sampling interval of system/* metrics (its $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it)
SYSTEM_METRICS_INTERVAL_S = 10.0
# The end of a run waits this long for MLflow's sampling thread, which retries for minutes during an outage.
SYSTEM_METRICS_STOP_S = 10.0
DATASET_INSERT_TRIES = 5  # see RunTracker.log_datasets


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, unwritable path, deleted experiment)."""


def date_home() -> Path:
    """``$DATE_HOME``, else ``~/.local/share/date``: the embedded MLflow store lives here."""
    return Path(os.environ.get("DATE_HOME") or "~/.local/share/date").expanduser().resolve()


def resolve_uri(uri: Optional[str] = None) -> str:
    """The tracking URI: ``uri`` (the config key) > ``$MLFLOW_TRACKING_URI`` > the embedded SQLite file."""
    if uri:
        return str(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str(date_home() / "mlflow.db")


def _sqlite_path(uri: str) -> Optional[Path]:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().absolute()


def is_http(uri: str) -> bool:
    """Whether ``uri`` is a tracking server's (``http(s)://``), whose requests :func:`quick_requests` shortens."""
    return uri.startswith(("http://", "https://"))


def _without_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@``: urllib cannot open such a URL, and /health needs no login."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@contextlib.contextmanager
def _environ(**values: str):
    """MLflow reads its settings from environment variables at each call: set some for a block, then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quick_requests(timeout_s: float = PROBE_TIMEOUT_S):
    """A block in which MLflow's requests to a server neither retry nor wait longer than ``timeout_s``: inside the
    training loop (and the final model's upload) a dead server must cost seconds, not MLflow's minutes of retries."""
    return _environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(max(timeout_s, 1))))


def check_reachable(uri: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast (TrackingError) when the store cannot be reached, before any training starts."""
    if is_http(uri):
        try:
            urllib.request.urlopen(_without_credentials(uri).rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            return  # the server answered (maybe no /health behind a proxy): it is reachable
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"The MLflow tracking server {mask_credentials(uri)} is unreachable ({reason}). Start it (e.g. "
                f"`mlflow server --host 127.0.0.1 --port 5000`), or point tracking.uri / MLFLOW_TRACKING_URI at a "
                f"reachable server or at a sqlite:///<file> store. Nothing was trained.") from None
    elif (path := _sqlite_path(uri)) is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"Cannot create the folder of the MLflow store {uri}: {exc}. Set DATE_HOME, "
                                "MLFLOW_TRACKING_URI or tracking.uri to a writable place.") from None
        if (problem := sqlite_problem(path)) is not None:
            raise TrackingError(f"The MLflow store {uri} cannot be used: {problem}. Set DATE_HOME, MLFLOW_TRACKING_URI "
                                "or tracking.uri to a writable place. Nothing was trained.")


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store (SQLite migrations) and the experiment if needed; return the experiment id.

    Call this in one process before parallel jobs start: several processes creating a fresh SQLite
    store at once race in its migrations.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            db = _sqlite_path(uri)
            artifacts = (db.parent / "mlartifacts").as_uri() if db is not None else None
            try:
                return client.create_experiment(name, artifact_location=artifacts)
            except MlflowException:  # created meanwhile by another process
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
    except MlflowException as exc:
        raise TrackingError(f"MLflow store {mask_credentials(uri)} failed while preparing experiment {name!r}: "
                            f"{mask_credentials(exc.message)}") from None
    if experiment.lifecycle_stage != "active":
        raise TrackingError(f"MLflow experiment {name!r} in {mask_credentials(uri)} is deleted. Restore it (`mlflow "
                            f"experiments restore --experiment-id {experiment.experiment_id}`) or set "
                            "tracking.experiment to another name.")
    return experiment.experiment_id


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout holding this package; "unknown" outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def mlflow_run_name(choices: Mapping[str, Any], seed: int, overrides: Sequence[str], *,
                    exclude: Iterable[str] = ()) -> str:
    """``dual-1x-resnet18-s0``, then the command's other overrides (``dual-1x-resnet18-s0 optim.lr=1e-3``), so the
    runs of a sweep differ in the UI; ``exclude``: keys that do not change what is trained (Hydra's
    override_dirname.exclude_keys, tracking.uri among them). At most RUN_NAME_MAX characters."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    skip = {*NAME_GROUPS, "seed", *exclude}
    extra = sorted(o.input_line for o in OverridesParser.create().parse_overrides(list(overrides))
                   if o.key_or_group not in skip)
    name = " ".join(["-".join([*(str(choices.get(g)) for g in NAME_GROUPS), f"s{seed}"]), *extra])
    return name if len(name) <= RUN_NAME_MAX else name[:RUN_NAME_MAX - 3] + "..."


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def dataset_inputs(dataset_cfg: Any, name: str, ann_files: Mapping[str, Path]) -> dict[str, tuple[str, str, str]]:
    """{split: (name, source, digest)} of the ``dataset`` node, for the run's MLflow dataset inputs.

    ``name``: the dataset group's choice ("synthetic"); source: the split's annotation file. Digest of a
    synthetic split: of its generation parameters (SyntheticParams.key(), which also fixes the pixels) and
    the split; of any other: of its annotation file (images are not read: COCO's are ~20 GB). Two runs on
    different data get different digests.
    """
    from date.data.synthetic import SyntheticParams

    key = SyntheticParams.from_config(dataset_cfg).key() if dataset_cfg.kind == "synthetic" else None
    inputs = {}
    for split, path in ann_files.items():
        digest = hashlib.sha256(f"{key}/{split}".encode()).hexdigest()[:12] if key else _file_digest(Path(path))
        inputs[split] = (name, str(path), digest)
    return inputs


def read_or_create_sweep_id(sweep_dir: Path) -> str:
    """The sweep id stored in ``<sweep_dir>/sweep_id``, created (a fresh uuid) by the first caller."""
    path = Path(sweep_dir) / SWEEP_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as f:
            f.write(uuid.uuid4().hex[:12] + "\n")
    except FileExistsError:
        pass
    for _ in range(50):  # another process may be between create and write
        value = path.read_text().strip()
        if value:
            return value
        time.sleep(0.1)
    raise TrackingError(f"{path} is empty; delete it and rerun the sweep.")


class SweepCallback(LaunchCheck):
    """Hydra callback: before a multirun's jobs start, create the store, the experiment and the sweep id; an
    unreachable server stops the sweep there (date.runtime.sweep_guard.LaunchCheck).

    Registered in conf/config.yaml (``hydra.callbacks.tracking``). Jobs read the id from
    ``<sweep dir>/sweep_id`` (the sweep dir is shared by all jobs, on SLURM too).
    """

    reports = (TrackingError,)

    def before_launch(self, config: DictConfig) -> None:
        uri = resolve_uri(config.tracking.uri)
        ensure_experiment(uri, config.tracking.experiment)
        sweep_id = read_or_create_sweep_id(Path(str(config.hydra.sweep.dir)))
        log.info("MLflow store %s, experiment %r, sweep_id %s", mask_credentials(uri), config.tracking.experiment,
                 sweep_id)


class RunTracker:
    """One MLflow run, with buffered, retried, de-duplicated metric logging. Used on rank 0 only.

    Args:
        uri: tracking URI.
        run_id: the MLflow run.
        seen: (key, step) pairs already in the run's history (skipped if logged again).
        retry_s: first wait after a failed send before sending again (doubles up to 2 minutes).
    """

    def __init__(self, *, uri: str, run_id: str, seen: Iterable[tuple[str, int]] = (), retry_s: float = 10.0):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)
        self._seen = set(seen)
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, step, timestamp ms)
        self._retry_s = self._base_retry_s = retry_s
        self._next_try = 0.0
        self._failing = False
        self._system_metrics = None  # MLflow's SystemMetricsMonitor while it samples

    @property
    def display_uri(self) -> str:
        """The URI for log lines: its password masked."""
        return mask_credentials(self.uri)

    @classmethod
    def start(cls, *, uri: str, experiment: str, run_dir: Path, run_name: str, tags: Mapping[str, str],
              run_id: Optional[str] = None, system_metrics: bool = False) -> "RunTracker":
        """Continue ``run_id`` if given and present in the store; else create a run and record its id in
        ``<run_dir>/mlflow_run_id`` at once, so that a kill before the first checkpoint still resumes it.

        A new run gets ``tags`` plus those ``mlflow.start_run`` adds (mlflow.user, mlflow.source.*); with
        ``system_metrics``, MLflow samples system/* metrics into the run until :meth:`set_terminated`.
        """
        tracker = cls._start_run(uri=uri, experiment=experiment, run_dir=run_dir, run_name=run_name, tags=tags,
                                 run_id=run_id)
        if system_metrics:
            tracker.start_system_metrics(resume=tracker.run_id == run_id)
        return tracker

    @classmethod
    def _start_run(cls, *, uri: str, experiment: str, run_dir: Path, run_name: str, tags: Mapping[str, str],
                   run_id: Optional[str]) -> "RunTracker":
        """:meth:`start` without the system metrics."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.context.registry import resolve_tags

        experiment_id = ensure_experiment(uri, experiment)
        client = MlflowClient(tracking_uri=uri)
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                log.warning("MLflow run %s is not in %s; starting a new run.", run_id, mask_credentials(uri))
            else:
                if run.info.lifecycle_stage == "active":
                    client.update_run(run_id, status="RUNNING")
                    log.info("Continuing MLflow run %s (%s)", run_id, mask_credentials(uri))
                    return cls(uri=uri, run_id=run_id, seen=_logged_steps(client, run))
                log.warning("MLflow run %s is deleted; starting a new run.", run_id)
        # the context tags mlflow.start_run sets (mlflow.user, mlflow.source.name/type/git.*); ours win on a clash
        run = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(dict(tags)))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / RUN_ID_FILE).write_text(run.info.run_id + "\n")
        log.info("MLflow run %s (%s) in experiment %r (%s)", run.info.run_id, run_name, experiment,
                 mask_credentials(uri))
        return cls(uri=uri, run_id=run.info.run_id)

    def start_system_metrics(self, *, resume: bool) -> None:
        """Start MLflow's sampling of system/* metrics (CPU, memory, disk, network; GPU with pynvml) into this run;
        ``resume``: continue the steps of a continued run. Its thread logs warnings and stops on errors (an
        outage ends the sampling); it never fails the run."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                           resume_logging=resume, tracking_uri=self.uri)
        except ImportError as exc:  # psutil (a dependency of this package) missing
            log.warning("No system metrics: %s. `pip install psutil`, or set tracking.system_metrics=false.", exc)
            return
        monitor.start()
        self._system_metrics = monitor

    def _stop_system_metrics(self) -> None:
        """Stop the sampling and send its last samples, waiting at most SYSTEM_METRICS_STOP_S: during an outage
        the sampling thread is inside MLflow's minutes of request retries."""
        monitor, self._system_metrics = self._system_metrics, None
        if monitor is None:
            return
        with quick_requests() if is_http(self.uri) else contextlib.nullcontext():
            stopper = threading.Thread(target=monitor.finish, name="stop-system-metrics", daemon=True)
            stopper.start()
            stopper.join(SYSTEM_METRICS_STOP_S)
        if stopper.is_alive():
            log.warning("MLflow's system-metrics thread did not stop within %.0f s (%s unreachable?); its last "
                        "samples are dropped.", SYSTEM_METRICS_STOP_S, self.display_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not yet in the run (a resumed run keeps its values; MLflow forbids changing them)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        values = {k: mask_credentials(str(v))[:6000] for k, v in params.items()}  # tracking.uri's password
        new = [Param(k, v) for k, v in values.items() if k not in existing]
        changed = [k for k, v in values.items() if k in existing and existing[k] != v]
        if changed:
            log.warning("Params %s differ from those already logged in run %s; keeping the logged values.",
                        changed, self.run_id)
        for i in range(0, len(new), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log_datasets(self, inputs: Mapping[str, tuple[str, str, str]]) -> None:
        """Log {split: (name, source, digest)} (see :func:`dataset_inputs`) as the run's dataset inputs, with the
        split as their context; MLflow skips those the run already has (a resumed run)."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        datasets = [DatasetInput(MetaDataset(LocalArtifactDatasetSource(source), name=name, digest=digest)
                                 ._to_mlflow_entity(),  # as mlflow.log_input converts it
                                 tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)])
                    for split, (name, source, digest) in inputs.items()]
        # MLflow stores a dataset once per experiment: it looks the dataset up, then inserts it. Two jobs of a
        # sweep that start together both miss it, and the second insert fails (UNIQUE constraint, or SQLite's
        # "database is locked" when both upgrade their read to a write); a retry finds the first job's row.
        for attempt in range(DATASET_INSERT_TRIES):
            try:
                self.client.log_inputs(self.run_id, datasets=datasets)
                return
            except Exception as exc:  # MlflowException from a SQL store, RestException through a server
                conflict = any(s in str(exc).lower() for s in ("unique constraint", "integrityerror",
                                                                  "database is locked"))
                if not conflict or attempt + 1 == DATASET_INSERT_TRIES:
                    raise
                time.sleep(random.uniform(0.05, 0.5))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Queue metrics for ``step``; (key, step) pairs already logged are dropped."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if (key, step) not in self._seen:
                self._seen.add((key, step))
                self._pending.append((key, float(value), int(step), now))

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def flush(self, *, force: bool = False) -> bool:
        """Send queued metrics; True when nothing is left. Never raises: a failure keeps them queued.

        Without ``force``, a send is attempted only once the retry wait after the last failure is over.
        """
        from mlflow.entities import Metric

        if not self._pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        try:
            with quick_requests() if is_http(self.uri) else contextlib.nullcontext():
                while self._pending:
                    chunk = self._pending[:1000]  # log_batch takes at most 1000 metrics
                    self.client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, s, t in chunk])
                    del self._pending[:len(chunk)]
        except Exception as exc:  # network errors come as several types; all mean "try later"
            if not self._failing:
                log.warning("MLflow (%s) unreachable: %s: %s. Training goes on; %d metrics are buffered and "
                            "retried.", self.display_uri, type(exc).__name__,
                            mask_credentials(str(exc).splitlines()[0])[:200], len(self._pending))
            self._failing = True
            self._next_try = time.monotonic() + self._retry_s
            self._retry_s = min(2 * self._retry_s, 120.0)
            return False
        if self._failing:
            log.info("MLflow (%s) reachable again; buffered metrics sent.", self.display_uri)
        self._failing = False
        self._retry_s = self._base_retry_s
        return True

    def flush_until(self, deadline_s: float) -> bool:
        """Retry sending for up to ``deadline_s`` seconds (end of training); True when all were sent."""
        end = time.monotonic() + deadline_s
        wait = 1.0
        while not self.flush(force=True):
            if time.monotonic() + wait > end:
                return False
            time.sleep(wait)
            wait = min(2 * wait, 15.0)
        return True

    def pending_state(self) -> list[list]:
        """Unsent metrics as plain lists (stored in checkpoints)."""
        return [list(p) for p in self._pending]

    def restore_pending(self, pending: Iterable[Iterable]) -> None:
        """Queue metrics saved by :meth:`pending_state` (skipping any the run already has)."""
        for key, value, step, ts in pending:
            if (key, int(step)) not in self._seen:
                self._seen.add((key, int(step)))
                self._pending.append((key, float(value), int(step), int(ts)))

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        """Upload a file; a failure is logged, not raised (it must not fail a finished training)."""
        try:
            with quick_requests(30) if is_http(self.uri) else contextlib.nullcontext():
                self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as exc:
            log.warning("Could not upload %s to MLflow run %s: %s", path, self.run_id, mask_credentials(str(exc)))

    def set_terminated(self, status: str) -> None:
        """Stop the system metrics; mark the run FINISHED / FAILED / KILLED (best effort)."""
        self._stop_system_metrics()
        # MLflow prints the run's link on stdout, password and all
        quiet = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"} if self.display_uri != self.uri else {}
        try:
            with quick_requests() if is_http(self.uri) else contextlib.nullcontext(), _environ(**quiet):
                self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            log.warning("Could not mark MLflow run %s %s: %s", self.run_id, status, mask_credentials(str(exc)))


def _logged_steps(client, run) -> set[tuple[str, int]]:
    """Every (key, step) already in ``run``'s metric histories."""
    seen = set()
    for key in run.data.metrics:
        seen.update((key, m.step) for m in client.get_metric_history(run.info.run_id, key))
    return seen


if __name__ == "__main__":
    print(resolve_uri())
