"""``--help`` of the entrypoints, written from the schema: each key with its default, its range and the comment written
beside it in the dataclass (date/config.py and the schemas next to their code), and each config group with its
options. The comments are the ones in the source, read with ``tokenize``: one home for every key's documentation."""
from __future__ import annotations

import dataclasses
import enum
import inspect
import io
import re
import textwrap
import tokenize
import typing
from typing import Any, Optional, Sequence

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from date.config import CONF_DIR

WIDTH = 120


def field_comments(schema: type) -> dict[str, str]:
    """{field: its comment}: the comment lines right above a field and the one at the end of its line, joined; the
    fields a dataclass inherits (DatasetConfig's from SyntheticParams) with their own class's comments."""
    found: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if dataclasses.is_dataclass(cls) and "__dataclass_fields__" in vars(cls):
            found.update(_own_comments(cls))
    return found


def _own_comments(schema: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(schema))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    comments = {n: "" if text.startswith("---") else text for n, text in comments.items()}  # "--- section" titles
    names = {f.name for f in dataclasses.fields(schema)}
    found: dict[str, str] = {}
    above: list[str] = []
    for number, line in enumerate(source.splitlines()[1:], start=2):  # line 1: the class line
        if line.strip().startswith("#"):
            above += [comments[number]] if comments.get(number) else []
            continue
        name = re.match(r"\s+(\w+)\s*:", line)
        if name and name.group(1) in names:
            found[name.group(1)] = " ".join([*above, *([comments[number]] if number in comments else [])])
        if line.strip():
            above = []
    return found


def _dataclass_in(hint: Any) -> Optional[type]:
    if dataclasses.is_dataclass(hint):
        return hint
    return next((a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)), None)


def _kind(hint: Any) -> str:
    """``int``, ``float``, ``bool``, ``str``, ``list``, ``dict`` or the choices of an enum (``o2m|o2o|dual``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args and typing.get_origin(hint) is typing.Union else hint
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "|".join(m.name for m in base)
    origin = typing.get_origin(base)
    return {list: "list", dict: "dict"}.get(origin, getattr(base, "__name__", str(base)))


def key_lines(schema: type, values: Any, sections: dict[str, type], prefix: str = "") -> list[str]:
    """One entry per leaf key: ``name = default  (type; range)`` and its comment, indented below."""
    hints = typing.get_type_hints(schema)
    comments = field_comments(schema)
    lines: list[str] = []
    for f in dataclasses.fields(schema):
        path = f"{prefix}{f.name}"
        child = sections.get(path) or _dataclass_in(hints[f.name])
        value = values.get(f.name) if values is not None else None
        if child is not None and (value is None or OmegaConf.is_dict(value)):
            lines += key_lines(child, value, sections, f"{path}.")
            continue
        shown = OmegaConf.to_container(value, enum_to_str=True) if OmegaConf.is_config(value) else value
        shown = shown.name if isinstance(shown, enum.Enum) else shown
        missing = values is not None and OmegaConf.is_missing(values, f.name)
        default = "??? (required)" if missing else "null" if shown is None else str(shown).lower() \
            if isinstance(shown, bool) else shown
        spec = "; ".join(filter(None, [_kind(hints[f.name]), f.metadata.get("expected", "")]))
        lines.append(f"  {path} = {default}  ({spec})")
        if comments.get(f.name):
            lines += textwrap.wrap(comments[f.name], WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


def group_lines(groups: Sequence[str], choices: dict) -> list[str]:
    lines = []
    for group in groups:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        shown = [f"{o} (default)" if o == choices.get(group) else o for o in options]
        lines.append(f"  {group}=" + " | ".join(shown))
    return lines


def schema_help(*, module: str, config_name: str, schema: type, usage: str, about: str, groups: Sequence[str] = (),
                sections: Optional[dict[str, type]] = None) -> str:
    """The ``--help`` text of ``python -m <module>``: usage, what it does, its groups, then every key it accepts."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=module.split(".")[-1]):
        cfg = compose(config_name=config_name, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    text = [f"Usage: {usage}", "", *textwrap.wrap(about, WIDTH), ""]
    if groups:
        text += ["Config groups (group=option; conf/<group>/<option>.yaml):", *group_lines(groups, choices), ""]
    text += ["Keys (key=value on the command line; default, type and range, then what it does):",
             *key_lines(schema, cfg, sections or {}), "",
             *textwrap.wrap(f"`python -m {module} --cfg job [overrides]` prints the composed config after the same "
                            "checks. A key that is not listed here is refused, with '+' too.", WIDTH)]
    return "\n".join(text)
