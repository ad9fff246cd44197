"""Hydra callbacks that check a sweep at launch, before any job starts.

Hydra turns an exception raised in a callback into a warning and launches the sweep anyway
(hydra/_internal/callbacks.py ``_notify``). :class:`LaunchCheck` is the base of this suite's multirun
callbacks: a bad input it meets ends the command with the one-paragraph message and exit code 2, and
nothing is launched.

:class:`DistinctRunDirs` refuses a sweep whose jobs would share a run dir (and so an MLflow run). A job's run
dir is named by its overrides minus ``hydra.job.config.override_dirname.exclude_keys`` (conf/config.yaml: the
keys that do not change what is trained, so that e.g. ``log_every=1`` still finds and resumes the same run).
Sweeping over one of those keys, or listing a value twice, gives jobs with one name: the second would
"resume" the first's finished run, train nothing and exit 0.
"""
from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from date.config import ConfigError
from date.runtime.logs import report_error


def collapsing_overrides(overrides: list[str], exclude_keys: list[str], sweep_dir: str) -> list[str]:
    """The sweep overrides (``key=a,b``) that would put two jobs into one run dir, each with the reason.

    ``sweep_dir`` is the unresolved ``hydra.sweep.dir``: an excluded key it interpolates (``${name}`` in
    conf/config.yaml) still separates the jobs.
    """
    problems = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            continue
        key = override.get_key_element()
        values = [str(v) for v in override.sweep_string_iterator()]
        if key in exclude_keys and "${" + key + "}" not in sweep_dir:
            problems.append(f"{key}={','.join(values)} (left out of run-dir names)")
        elif len(set(values)) < len(values):
            problems.append(f"{key}={','.join(values)} (a value listed twice)")
    return problems


class LaunchCheck(Callback):
    """A multirun callback whose input errors (the types in ``reports``) stop the command: the message, exit
    code 2, nothing launched. Subclasses implement :meth:`before_launch`."""

    reports: tuple[type[Exception], ...] = ()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.before_launch(config)
        except self.reports as exc:
            report_error(str(exc))
            raise SystemExit(2) from None

    def before_launch(self, config: DictConfig) -> None:
        raise NotImplementedError


class DistinctRunDirs(LaunchCheck):
    """Registered in conf/config.yaml (``hydra.callbacks.distinct_run_dirs``)."""

    reports = (ConfigError,)

    def before_launch(self, config: DictConfig) -> None:
        sweep_dir = OmegaConf.to_container(config.hydra.sweep, resolve=False)["dir"]
        problems = collapsing_overrides(list(config.hydra.overrides.task),
                                        list(config.hydra.job.config.override_dirname.exclude_keys), str(sweep_dir))
        if problems:
            raise ConfigError(
                f"This sweep would run several jobs in one run dir and one MLflow run: {'; '.join(problems)}. The "
                "later jobs would find the first one's checkpoint and train nothing. Sweep over keys that change "
                "what is trained and list each value once, or launch one sweep per value of those keys. Nothing was "
                "launched.")
