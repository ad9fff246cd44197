"""Shared fixtures: a sandboxed environment for `python -m date.*` runs (in a subprocess where the process itself is
tested: signals, a training's exit, preemption, SLURM; in-process for commands that train nothing), one local MLflow
server for the session, and the uninterrupted reference run that the stop-and-resume tests compare with (trained
once per session).

Every run started by the tests writes its MLflow store, synthetic data and outputs under pytest's
temporary directories, never into ~/.local/share/date or ~/.cache/date.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import date.config  # noqa: F401  (registers the schemas conf/*.yaml build on, for Hydra's compose API)
from date.data.synthetic.cache import file_lock
from date.runtime import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]

# A training run of a few seconds: 8 + 4 synthetic images, 2 epochs x 2 iterations, eval at each epoch; no
# MLflow model at the end (test_train_tracking.py checks that one is logged).
SMOKE = ["schedule=smoke", "dataset.num_train=8", "dataset.num_val=4", "batch_size=4", "num_workers=0",
         "log_every=1", "eval_every=1", "tracking.log_model=false"]


# hydra/launcher=slurm sized for the local test cluster (tests/slurm/start.sh): CPU jobs of one core and
# 2 GB; timeout_min >= 15 so that submitit reads USR2 as a preemption, not a time-out.
SLURM_CPU = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=1",
             "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15"]


def pytest_configure(config) -> None:
    """Under xdist, each worker's in-process torch gets its share of the cores: two workers of 2 threads each on 2
    cores left OpenMP threads spinning for a busy core (the oversubscription sandbox_env's one thread avoids)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items) -> None:
    """The longest work is handed out first, so that the workers end together on short tests (xdist deals work in
    this order): the xdist groups (the SLURM tests, the modules whose tests share a training fixture: a minute or
    more each), then the other `slow` tests (a training or a Python process each), then the rest."""
    items.sort(key=lambda item: (item.get_closest_marker("xdist_group") is None,
                                 item.get_closest_marker("slow") is None))  # stable: file order otherwise


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The local SLURM cluster must be up for tests marked `slurm`: they fail (not skip) without it."""
    problem = None
    if shutil.which("sinfo") is None:
        problem = "sinfo is not installed"
    else:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
        states = result.stdout.split()
        if result.returncode != 0:
            problem = f"sinfo failed: {result.stderr.strip()[:300]}"
        elif not states or not all(s in ("idle", "mix", "alloc") for s in states):
            problem = f"no usable node (sinfo node states: {states})"
    if problem:
        pytest.fail(f"{problem}: start the local SLURM with tests/slurm/start.sh (as root; stop it with "
                    "tests/slurm/stop.sh). .ci/run does both.", pytrace=False)


def shared_tmp(tmp_path_factory) -> Path:
    """The session's temporary folder that every xdist worker sees (each worker's own basetemp lies in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One synthetic-data cache for the whole session, shared by the xdist workers (each small set is generated
    once: the generator's own lock and atomic renames keep concurrent generations apart)."""
    path = shared_tmp(tmp_path_factory) / "data_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def fresh_mlflow_stores():
    """MLflow keeps a store, with its open SQLite connections, per URI for the life of the process. A test's tmp_path
    can be the path of an earlier test's deleted one (pytest numbers them per test name), so a store read or written
    in this process (in-process commands, MlflowClient checks) would reach the deleted file: SQLite's "attempt to
    write a readonly database", or the earlier test's runs. Every test starts with none kept."""
    yield
    if "mlflow.store.tracking.sqlalchemy_store" in sys.modules:  # (MLflow has no public call for this)
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        type(_tracking_store_registry)._get_store_with_resolved_uri.cache_clear()  # the store per URI
        for engine in SqlAlchemyStore._engine_map.values():  # and its engine's pooled connections
            engine.dispose()
        SqlAlchemyStore._engine_map.clear()


@pytest.fixture
def one_thread():
    """In-process training with one intra-op thread (see train_env), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def migrated_store(data_cache: Path) -> Path:
    """An empty MLflow SQLite store, created (its ~40 schema migrations) once per session beside the data cache:
    a copy of it spares each training of the suite the migrations (1.5-4 s a process here)."""
    path = data_cache.parent / "mlflow_template.db"
    if not path.exists():
        from mlflow.tracking import MlflowClient

        tmp = f"{path}.{os.getpid()}.tmp"  # xdist workers may make it at the same time: the last rename wins
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
        os.replace(tmp, path)
    return path


def sandbox_env(root: Path, data_cache: Path, *, tracking_uri: str | None = None,
                migrated: bool = True) -> dict[str, str]:
    """Environment for `python -m date.*` subprocesses: repo on the path, MLflow store (default: a SQLite file,
    a copy of the session's migrated empty store unless ``migrated`` is false) and DATE_HOME under ``root``, the
    shared synthetic-data cache."""
    if tracking_uri is None and migrated and not (root / "mlflow.db").exists():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_store(data_cache), root / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HYDRA_", "DATE_"))}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
               DATE_HOME=str(root / "date_home"), DATE_DATA_CACHE=str(data_cache),
               MLFLOW_TRACKING_URI=tracking_uri or f"sqlite:///{root / 'mlflow.db'}",
               # one intra-op thread: on a small, shared machine OpenMP threads spinning for a busy core
               # made these tiny runs 30x slower; with one thread they take seconds whatever the load
               OMP_NUM_THREADS="1")
    return env


@pytest.fixture
def train_env(tmp_path, data_cache) -> dict[str, str]:
    """Environment for a `python -m date.*` command of one test (see sandbox_env): its SQLite store a copy of the
    session's migrated empty one, which spares each training the migrations (~7 s of CPU under load)."""
    return sandbox_env(tmp_path, data_cache)


@pytest.fixture
def fresh_env(tmp_path, data_cache) -> dict[str, str]:
    """As train_env with no MLflow store yet, as on a new machine: a refused command must create none; a training,
    a local sweep (its jobs racing for the first migration) and a SLURM sweep (the launcher creates it) create it."""
    return sandbox_env(tmp_path, data_cache, migrated=False)


def run_module(module: str, args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 300,
               ) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in ``cwd``; returns the finished process (stdout, stderr as text)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_in_process(module: str, args: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` run in this process: the same result as run_module (exit code, stdout, stderr; an
    uncaught exception is its traceback on stderr and exit code 1) without starting Python and importing torch again
    (6-8 s of CPU each). For commands whose process itself is not under test (refusals, an evaluation, a training
    whose outputs a test reads); signals, exits, locks and SLURM need run_module. torch runs on the threads the
    environment's OMP_NUM_THREADS gives a new process (sandbox_env: 1), so a training gives the numbers it gives in
    a process of its own. What the command changes in this process is put back: the environment, cwd, sys.argv,
    logging, signal handlers, torch's grad mode and threads, Hydra's global state."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    loggers = [logging.getLogger(), *(v for v in logging.root.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    saved_loggers = [(lg, lg.handlers[:], lg.level, lg.disabled, lg.propagate) for lg in loggers]
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    environ, cwd_before, argv, grad, threads = (dict(os.environ), os.getcwd(), sys.argv, torch.is_grad_enabled(),
                                                torch.get_num_threads())
    stdout, stderr, returncode = io.StringIO(), io.StringIO(), 0
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    os.chdir(cwd)
    sys.argv = [module, *args]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)  # runpy: date.* imported
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            except SystemExit as exc:  # as the interpreter turns it into an exit code
                if exc.code is None or isinstance(exc.code, int):
                    returncode = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    returncode = 1
            except Exception:  # noqa: BLE001  (what the interpreter would print before exiting with 1)
                traceback.print_exc()
                returncode = 1
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd_before)
        sys.argv = argv
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
        for lg, handlers, level, disabled, propagate in saved_loggers:
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:], lg.level, lg.disabled, lg.propagate = handlers, level, disabled, propagate
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], returncode, stdout.getvalue(),
                                       stderr.getvalue())


# The stop-and-resume tests' run (test_train_resume.py, test_faults.py, test_slurm.py): 2 epochs x 12 iterations of
# batch 2 with a loader worker, as the default config has (a terminal, `timeout` and SLURM signal it too); long
# enough to be stopped mid-epoch. Each test stops and resumes its own run, and compares it with reference_run.
RESUMABLE = ["schedule=smoke", "schedule.max_iters=null", "dataset.num_train=24", "dataset.num_val=4", "batch_size=2",
             "num_workers=1", "log_every=1", "eval_every=1"]
RESUMABLE_ITERS = 24


@dataclass(frozen=True)
class ReferenceRun:
    """A finished `python -m date.train` run: its run dir and the MLflow store that holds only it."""

    run_dir: Path  # model_final.pth, last.pth, train.log, mlflow_run_id
    tracking_uri: str

    @property
    def run_id(self) -> str:
        return (self.run_dir / "mlflow_run_id").read_text().strip()


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, data_cache) -> ReferenceRun:
    """`python -m date.train <RESUMABLE>`, uninterrupted: trained once per session by the first xdist worker that
    asks, read by the tests of every worker (never written: each resumes its own run in its own dir and store)."""
    root = shared_tmp(tmp_path_factory) / "reference"
    with file_lock(root.with_suffix(".lock")):  # the first worker trains it, the others wait and read it
        if not (root / "run" / ckpt.FINAL).exists():  # a failed try of another worker is tried again
            shutil.rmtree(root, ignore_errors=True)
            env = sandbox_env(root, data_cache)
            result = run_module("date.train", [*RESUMABLE, f"hydra.run.dir={root / 'run'}"], env=env, cwd=root,
                                timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
    return ReferenceRun(root / "run", f"sqlite:///{root / 'mlflow.db'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store (a copy of ``template``, an empty migrated store, when
    given: it spares the server's start the migrations); stopped by its PID (and its own process group)."""

    def __init__(self, root: Path, template: Path | None = None):
        self.root = root
        self.template = template
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.template is not None and not (self.root / "mlflow.db").exists():
            shutil.copyfile(self.template, self.root / "mlflow.db")
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            # MLflow 3's server also starts a job runner and seven huey consumers (GenAI jobs), each importing
            # mlflow: 29 s of CPU a start instead of 8; tracking needs none of them
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        self.proc.terminate()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        try:  # workers it spawned are in its session's process group (pgid == its pid)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, data_cache):
    """One server for the session: a test on it logs to an experiment of its own (tracking.experiment=...)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"), migrated_store(data_cache))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def restartable_mlflow_server(tmp_path, data_cache):
    """A server of the test's own, which the test may stop and start again (same port, same store)."""
    server = MlflowServer(tmp_path / "mlflow_server", migrated_store(data_cache))
    server.start()
    yield server
    server.stop()


def two_images():
    """A batch of two 128-px images (random pixels) with three boxes of three classes: criterion tests."""
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 128, 128, generator=g)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 20.0, 120.0, 110.0]]),
                "labels": torch.tensor([0, 2]), "image_size": (128, 128)},
               {"boxes": torch.tensor([[20.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1]),
                "image_size": (128, 128)}]
    return images, targets
