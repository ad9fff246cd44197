"""Hydra launchers for ``hydra/launcher=slurm`` and ``hydra/launcher=local``: the submitit plugin's,
plus an end-of-sweep report and one writer of Hydra's per-run files.

What the plugin's launcher (hydra-submitit-launcher 1.2) does not do, and these subclasses add:

* It returns on the first failed job, with submitit's exception, while the other jobs still run.
  :meth:`_SweepReport.launch` waits for every job of the array, prints where the results are and one
  status line per job (a failed one with its error and its log, ``.submitit/<id>/<id>_0_log.err``),
  then fails the sweep naming the failed jobs. Results of the jobs that finished are kept.
* When sbatch refuses the job array, it raises submitit's FailedJobError with a traceback;
  :class:`SubmissionRefused` says instead what sbatch said and which ``hydra.launcher`` key to change.
* Every task of a multi-task job (``tasks_per_node`` > 1: one process per GPU) runs the whole Hydra
  task and would rewrite ``<run dir>/.hydra/``; only rank 0 writes it here.

Submission itself, the executor parameters and ``checkpoint()`` (resubmit the same Hydra job after
preemption or a time limit; the task resumes from its last.pth: date/preemption.py) are the plugin's.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from date.runtime.tracking import SWEEP_ID_FILE, resolve_uri

log = logging.getLogger(__name__)

# sbatch's words when it cannot reach the controller (a refusal that no hydra.launcher key can fix)
CONTROLLER_DOWN = re.compile(r"unable to contact slurm controller|connection refused|socket timed out|connect failure",
                             re.IGNORECASE)
# What a launch writes into its sweep dir before sbatch answers: Hydra's multirun.yaml, the sweep id
# (date.runtime.tracking.SweepCallback) and submitit's folder with the pickled jobs
LAUNCH_FILES = {"multirun.yaml", SWEEP_ID_FILE, ".submitit"}


class SweepJobsFailed(CompactHydraException):
    """Some jobs of a sweep failed (Hydra prints only this message, no traceback of internals)."""


class SubmissionRefused(CompactHydraException):
    """sbatch refused the sweep's job array (Hydra prints only this message: sbatch's words and the key to change)."""


def _refusal_message(sbatch_error: str, params: dict) -> str:
    """What sbatch said and the launcher key to change: the GPUs asked for by default (one per task) are the
    usual cause on a CPU-only partition, any other refusal names an sbatch option set by hydra.launcher.*."""
    said = "\n  ".join(line.strip() for line in sbatch_error.splitlines() if line.strip()) or "(no error message)"
    if CONTROLLER_DOWN.search(sbatch_error):
        hint = ("The SLURM controller (slurmctld) is down or unreachable: the sweep's options are not at fault. "
                "Check it with `scontrol ping` or `sinfo`, start it or wait for it, then rerun the same command.")
    elif "gres" in sbatch_error.lower() or "gpu" in sbatch_error.lower():
        hint = (f"The launcher asks for hydra.launcher.gpus_per_node={params.get('gpus_per_node')} GPUs per node "
                "(default: one per task); on a partition without GPUs set hydra.launcher.gpus_per_node=null "
                "(or pick a GPU partition: hydra.launcher.partition=...).")
    else:
        hint = ("Change the sbatch option it names: the hydra.launcher.* keys (conf/hydra/launcher/slurm.yaml, "
                "or override them on the command line).")
    return f"sbatch refused the sweep's job array, nothing was submitted:\n  {said}\n{hint}"


def remove_unlaunched_sweep_dir(sweep_dir: Path) -> bool:
    """A sweep sbatch refused leaves no sweep dir behind: remove it (and the empty folders above it, up to the launch
    directory) when it holds only what this launch wrote there (LAUNCH_FILES). True if removed."""
    sweep_dir = sweep_dir.absolute()
    if not sweep_dir.is_dir() or not {p.name for p in sweep_dir.iterdir()} <= LAUNCH_FILES:
        return False  # an earlier launch's jobs: keep everything
    shutil.rmtree(sweep_dir, ignore_errors=True)
    for parent in sweep_dir.parents:
        if parent == Path.cwd() or Path.cwd() not in parent.parents:
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
    return True


def _task_rank() -> int:
    """This task's global rank in its submitit job (``__call__`` runs inside one, SLURM or local)."""
    import submitit

    return submitit.JobEnvironment().global_rank


def _error_line(stderr_log: Path) -> str:
    """The user-facing error of a failed job: its last "Error: ..." line (date.runtime.logs.report_error),
    else the exception line of its last traceback (log lines written after it, e.g. while MLflow's threads
    stop, are skipped), else the last line of its error log."""
    try:
        lines = [line.rstrip() for line in stderr_log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"no error log at {stderr_log}"
    errors = [line for line in lines if line.startswith("Error: ")]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if errors:
        line = errors[-1]
    elif tracebacks:  # the frames are indented; the first line that is not is the exception
        line = next((line for line in lines[tracebacks[-1] + 1:] if not line[0].isspace()), lines[-1])
    else:
        line = lines[-1] if lines else "the error log is empty"
    line = line.strip()
    return line if len(line) <= 400 else line[:400] + " ..."


class _SweepReport:
    """Mixed into the plugin's launchers (see the module docstring)."""

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict) -> JobReturn:
        if _task_rank() > 0:  # rank 0 alone writes <run dir>/.hydra (a hydra.* override: not in the run name)
            sweep_overrides = [*sweep_overrides, "hydra.output_subdir=null"]
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        returns, lines, failed = [], [], []
        for idx, (overrides, job) in enumerate(zip(job_overrides, jobs), start=initial_job_idx):
            name = f"#{idx} {' '.join(filter_overrides(overrides)) or '(no overrides)'} (job {job.job_id})"
            try:
                ret = job.results()[0]  # every task's result; task 0 is the one that logs
            except Exception as exc:  # killed, out of memory, or exited without a result (input errors)
                ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED,
                                _return_value=RuntimeError(str(exc).splitlines()[0]))
            returns.append(ret)
            if ret.status == JobStatus.COMPLETED:
                lines.append(f"  COMPLETED  {name}: {ret.hydra_cfg.hydra.runtime.output_dir}")
            else:
                reason = _error_line(job.paths.stderr)
                failed.append(f"{name}: {reason} (log: {job.paths.stderr})")
                lines.append(f"  FAILED     {name}: {reason}\n             log: {job.paths.stderr}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_id_file = sweep_dir / SWEEP_ID_FILE
        sweep_id = sweep_id_file.read_text().strip() if sweep_id_file.exists() else "?"
        log.info("Sweep finished: %d of %d jobs completed. Results in %s; MLflow %s, experiment %r, tag "
                 "sweep_id=%s\n%s", len(jobs) - len(failed), len(jobs), sweep_dir,
                 resolve_uri(self.config.tracking.uri), self.config.tracking.experiment, sweep_id, "\n".join(lines))
        if failed:
            raise SweepJobsFailed(f"{len(failed)} of {len(jobs)} jobs of the sweep failed (the others' results are "
                                  "kept):\n  " + "\n  ".join(failed))
        return returns

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """Submit one job array, as the plugin's ``launch`` does (hydra-submitit-launcher 1.2.0); returns
        the submitit jobs instead of waiting for the first one."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": self.params[k] for k in ["max_num_timeout"] if k in self.params})
        base_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base_keys else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit '%s' sweep output dir: %s", self._EXECUTOR, sweep_dir)
        args = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            return executor.map_array(self, *zip(*args))
        except submitit.core.utils.FailedJobError as exc:  # sbatch exited non-zero; its stderr is the message
            remove_unlaunched_sweep_dir(sweep_dir)
            raise SubmissionRefused(_refusal_message(str(exc), self.params)) from exc


class SlurmLauncher(_SweepReport, plugin.SlurmLauncher):
    """``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml): one SLURM job array per sweep."""


class LocalLauncher(_SweepReport, plugin.LocalLauncher):
    """``hydra/launcher=local`` (conf/hydra/launcher/local.yaml): the same jobs as processes on this machine."""
