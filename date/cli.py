"""The front door of the entrypoints (date.train, date.evaluate, date.predict, date.export): the command line's config
is composed and checked before Hydra starts the job.

Why before: Hydra creates the run dir (``.hydra/``, the job log) before the job's first line runs, reports its own
composition errors (a wrong type, an unknown option) in its own format with exit code 1, and accepts any key given
with ``+`` (``+optim.lrr=0.1`` trains on with the default lr). Here, every job of the command (each job of a sweep)
is composed with Hydra's compose API from the same overrides, then:

1. Hydra's and OmegaConf's errors become one paragraph naming the key, the value and the choices;
2. a key the entrypoint's schema does not have is refused, with ``+`` or without, naming the closest known key;
3. the entrypoint's range checks run (``--cfg job`` too: it prints only a config that would run);
4. unless only printing (``--cfg``), the entrypoint's checks of the environment run (train: the device, the
   backbone weights, the batch size against the dataset, the run dir and the MLflow store).

Bad input ends as everywhere in the suite: ``Error: ...`` on stderr, exit code 2, nothing created. The job itself
checks again (a SLURM job runs without this front door). ``--config-path`` / ``--config-dir`` skip these checks.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from date.config import CONF_DIR, ConfigError
from date.errors import INPUT_ERRORS
from date.runtime.logs import errors_as_messages


@dataclass
class Entrypoint:
    """What the front door needs to know about one entrypoint."""

    module: str  # "date.train": in messages
    config_name: str  # its primary config in conf/
    schema: type  # the dataclass of its config (unknown keys and suggestions)
    sections: Mapping[str, type] = field(default_factory=dict)  # untyped nodes with a schema: {"dataset": ...}
    renamed: Mapping[str, str] = field(default_factory=dict)  # keys of earlier versions -> their new name
    check_config: Optional[Callable[[DictConfig], None]] = None  # the ranges; raises ConfigError
    # the environment, given every job's config and whether it is a sweep; raises one of INPUT_ERRORS
    check_run: Optional[Callable[[Sequence[DictConfig], bool], None]] = None
    usage: str = ""  # --help: the usage line (empty: the entrypoint has no schema --help of its own)
    about: str = ""  # --help: what the command does
    help_groups: Sequence[str] = ()  # --help: the config groups it lists
    keys_listed_by: str = ""  # the command that lists the keys (default: python -m <module> --help)

    def help_text(self) -> str:
        """The --help text, written from the schema (date.cli_help reads its source: imported only for --help)."""
        from date.cli_help import schema_help

        return schema_help(module=self.module, config_name=self.config_name, schema=self.schema, usage=self.usage,
                           about=self.about, groups=self.help_groups)

    @property
    def keys_hint(self) -> str:
        return f"`{self.keys_listed_by or f'python -m {self.module} --help'}` lists every key."


def main(entry: Entrypoint, hydra_main: Callable[[], Any], argv: Optional[Sequence[str]] = None) -> Any:
    """Check the command line (see the module docstring), then run ``hydra_main`` (the @hydra.main function)."""
    args = get_args_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.help and entry.usage:
        print(entry.help_text())
        sys.exit(0)
    hydra_only = args.hydra_help or args.info or args.shell_completion or args.experimental_rerun
    if not (hydra_only or args.config_path or args.config_dir):
        with errors_as_messages(dict.fromkeys(INPUT_ERRORS, 2)):
            check_command(entry, args.overrides, multirun=args.multirun, only_print=args.cfg is not None)
    return hydra_main()


def check_command(entry: Entrypoint, overrides: Sequence[str], *, multirun: bool, only_print: bool = False) -> None:
    """Compose every job of the command and check it (1-4 of the module docstring); ConfigError and the like."""
    jobs = job_overrides(overrides) if multirun else [list(overrides)]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=entry.module.split(".")[-1]):
        configs = [_compose_and_check(entry, job) for job in jobs]
        if entry.check_run is not None and not only_print:
            entry.check_run(configs, multirun)


def compose_checked(entry: Entrypoint, overrides: Sequence[str]) -> DictConfig:
    """One config as ``python -m <entry.module> <overrides>`` composes it, checked (1-3 of the module docstring):
    for commands that compose the training config outside Hydra's main (python -m date.data.synthetic)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=entry.module.split(".")[-1]):
        return _compose_and_check(entry, overrides)


def _compose_and_check(entry: Entrypoint, overrides: Sequence[str]) -> DictConfig:
    cfg = compose_job(entry, overrides)
    try:
        if entry.check_config is not None:
            entry.check_config(cfg)
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve (${nope})
        raise ConfigError(f"{_first_lines(str(exc))}. Fix that value on the command line.") from None
    return cfg


def job_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """The overrides of each job of a sweep (``seed=0,1 lr=1,2`` -> 4 lists), as Hydra's basic sweeper splits them."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        [batches] = BasicSweeper.split_arguments(parsed, None)
    except HydraException as exc:
        raise ConfigError(hydra_error_message(exc, overrides, None)) from None
    return batches


def compose_job(entry: Entrypoint, overrides: Sequence[str]) -> DictConfig:
    """The config of one job (with its ``hydra`` node, so that run dirs resolve); Hydra's errors and unknown keys as
    ConfigError."""
    try:
        cfg = compose(config_name=entry.config_name, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(hydra_error_message(exc, overrides, entry)) from None
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} and the run dir resolve as in the job
    unknown = unknown_keys(cfg, entry.schema, entry.sections, root=True)
    if unknown:
        raise ConfigError(unknown_keys_message(unknown, entry))
    return cfg


# ------------------------------------------------------------------ keys
def _field_types(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(schema)}


def _dataclass_in(hint: Any) -> Optional[type]:
    """The dataclass a field's type names (``BackboneConfig``, ``Optional[...]`` of one), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)


def unknown_keys(node: DictConfig, schema: type, sections: Mapping[str, type] = {}, *, prefix: str = "",
                 root: bool = False) -> list[str]:
    """The dotted keys of ``node`` that ``schema`` (recursively; ``sections`` for untyped nodes) does not have."""
    types = _field_types(schema)
    found = []
    for key, child in node.items_ex(resolve=False):
        if root and key == "hydra":
            continue
        path = f"{prefix}{key}"
        if key not in types:
            found.append(path)
            continue
        child_schema = sections.get(path) or _dataclass_in(types[key])
        if child_schema is not None and isinstance(child, DictConfig) and not child._is_none():  # dataset: null
            found += unknown_keys(child, child_schema, sections, prefix=f"{path}.")
    return found


def known_keys(schema: type, sections: Mapping[str, type] = {}, prefix: str = "") -> list[str]:
    """Every dotted key of ``schema`` (nodes and leaves)."""
    keys = []
    for name, hint in _field_types(schema).items():
        path = f"{prefix}{name}"
        keys.append(path)
        child = sections.get(path) or _dataclass_in(hint)
        if child is not None:
            keys += known_keys(child, sections, f"{path}.")
    return keys


def closest_key(key: str, known: Sequence[str]) -> Optional[str]:
    """The known key most like ``key`` (difflib), comparing whole paths, then the last parts (``lr`` -> optim.lr)."""
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaves = {}
    for path in known:
        leaves.setdefault(path.rsplit(".", 1)[-1], path)
    match = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.75)
    return leaves[match[0]] if match else None


def unknown_keys_message(keys: Sequence[str], entry: Entrypoint) -> str:
    known = known_keys(entry.schema, entry.sections)
    parts = []
    for key in keys:
        if key in entry.renamed:
            parts.append(f"{key} (renamed: its name is now {entry.renamed[key]}, the same in date.evaluate, "
                         f"date.predict and date.export; pass {entry.renamed[key]}=...)")
        elif (near := closest_key(key, known)) is not None:
            parts.append(f"{key} (did you mean {near}?)")
        else:
            parts.append(f"{key} (no known key is close)")
    return (f"Unknown config key{'s' if len(keys) > 1 else ''} for {entry.module}: {'; '.join(parts)}. With or "
            f"without '+', a key that is not in the schema is refused rather than ignored. {entry.keys_hint}")


# ------------------------------------------------------------------ Hydra's errors as one paragraph
def _first_lines(text: str) -> str:
    """Hydra's multi-line messages as one line, without the config search path and OmegaConf's node dump."""
    text = text.split("\nConfig search path")[0]
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not re.match(r"(full_key|reference_type|object_type)=?", line.strip())]
    return " ".join(lines).rstrip(".")


def _causes(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def hydra_error_message(exc: BaseException, overrides: Sequence[str], entry: Optional[Entrypoint]) -> str:
    """Hydra's error ``exc`` while composing ``overrides``, as one paragraph that says what to pass instead."""
    message = str(exc)
    help_hint = f" {entry.keys_hint}" if entry is not None else ""
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    if isinstance(exc, MissingConfigException) and missing:
        group, option = missing.groups()
        options = re.findall(r"^\t(\S+)$", message.split("Available options")[-1], flags=re.M)
        near = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
        return (f"{group}={option}: the {group} group has no option {option!r}; its options are "
                f"{', '.join(options) or '(none)'} (conf/{group}/)." + (f" Did you mean {group}={near[0]}?" if near
                                                                      else ""))
    for cause in _causes(exc):
        unknown = isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and entry is not None
        if unknown and getattr(cause, "full_key", None):
            return unknown_keys_message([cause.full_key], entry)
        if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
            given = re.search(r"Error merging override (\S+)", message)
            return (f"{given.group(1) if given else cause.full_key}: {_first_lines(cause.msg)}. Pass a value of "
                    f"the key's type.{help_hint}")
    if isinstance(exc, OverrideParseException):
        return (f"Cannot parse the overrides {' '.join(overrides)}: {_first_lines(message.split(chr(10))[0])}. A value "
                "holding brackets, commas, quotes or spaces follows Hydra's override grammar "
                "(https://hydra.cc/docs/advanced/override_grammar/basic/), e.g. 'key=[1,2]' quoted for the shell.")
    if "An item is already at" in message:
        key = re.search(r"An item is already at '([^']+)'", message).group(1)
        return f"+{key}: {key} exists already, and '+' adds a new key. Set it without the '+': {key}=<value>."
    return f"Invalid command line: {_first_lines(message)}.{help_hint}"
