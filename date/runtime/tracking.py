"""MLflow tracking: where the store is, what a run is called and tagged, and the sweep's id.

Store (first match wins):
  1. the ``tracking.uri`` config key,
  2. ``$MLFLOW_TRACKING_URI``,
  3. ``sqlite:///$DATE_HOME/mlflow.db`` with artifacts in ``$DATE_HOME/mlartifacts``;
     ``DATE_HOME`` defaults to ``~/.local/share/date``. This place does not depend on the directory
     a run is launched from. ``python -m date.runtime.tracking`` prints the URI, e.g. for
     ``mlflow ui --backend-store-uri "$(python -m date.runtime.tracking)"``.

A run is named after what ran (``dual-1x-resnet18-s0 optim.lr=0.001``: :func:`mlflow_run_name`), carries
the tags ``mlflow.start_run`` would set (user, source, git), MLflow's ``system/*`` metrics
(``tracking.system_metrics``) and its train / val datasets as inputs (:func:`dataset_inputs`). A password
in an ``http://user:password@host`` URI is masked wherever the URI is logged (:func:`mask_credentials`).
The run itself, with metrics that survive outages and restarts, is date/runtime/run_tracker.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
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
def temporary_environ(**values: str):
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
    return temporary_environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                             MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(max(timeout_s, 1))))



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

    generated = dataset_cfg.kind in ("synthetic", "synthetic_crowd")
    key = SyntheticParams.from_config(dataset_cfg).key() if generated else None
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


if __name__ == "__main__":
    print(resolve_uri())
