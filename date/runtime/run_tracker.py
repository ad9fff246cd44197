"""One MLflow run per job, with metrics that survive outages and restarts; a tracker that does nothing.

Metric delivery: :class:`RunTracker` buffers metrics and sends them with ``log_batch``; a batch that
fails (server down) stays buffered and is retried later, and whatever is still unsent is stored in
the checkpoint. On resume, (key, step) pairs already in the run's history are not logged again, so
the history has no duplicated and no missing steps.

:class:`NullTracker` has the same methods and does nothing: the tracker of the processes other than rank 0
(and of a training run in-process without MLflow), so no caller asks whether there is a tracker.
"""
from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from date.runtime.logs import mask_credentials
from date.runtime.tracking import RUN_ID_FILE, ensure_experiment, is_http, quick_requests, temporary_environ

log = logging.getLogger(__name__)

# MLflow's sampling interval of system/* metrics (its $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it)
SYSTEM_METRICS_INTERVAL_S = 10.0
# The end of a run waits this long for MLflow's sampling thread, which retries for minutes during an outage.
SYSTEM_METRICS_STOP_S = 10.0
DATASET_INSERT_TRIES = 5  # see RunTracker.log_datasets


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
            with quick_requests() if is_http(self.uri) else contextlib.nullcontext(), temporary_environ(**quiet):
                self.client.set_terminated(self.run_id, status=status)
        except Exception as exc:
            log.warning("Could not mark MLflow run %s %s: %s", self.run_id, status, mask_credentials(str(exc)))


def _logged_steps(client, run) -> set[tuple[str, int]]:
    """Every (key, step) already in ``run``'s metric histories."""
    seen = set()
    for key in run.data.metrics:
        seen.update((key, m.step) for m in client.get_metric_history(run.info.run_id, key))
    return seen


class NullTracker:
    """The tracker where nothing is tracked: every method of :class:`RunTracker` the training calls, doing nothing.
    Nothing is ever pending, so a checkpoint records no run id and no unsent metrics."""

    uri = display_uri = run_id = None
    num_pending = 0

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_datasets(self, inputs: Mapping[str, tuple[str, str, str]]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        pass

    def flush(self, *, force: bool = False) -> bool:
        return True

    def flush_until(self, deadline_s: float) -> bool:
        return True

    def pending_state(self) -> list[list]:
        return []

    def restore_pending(self, pending: Iterable[Iterable]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        pass

    def set_terminated(self, status: str) -> None:
        pass
