"""Where the entrypoints write: output paths checked before any work, so that no command writes over one of its
inputs or over a file it did not create for this purpose, and none runs for minutes to fail at its last write.

``out=`` is the output key of date.evaluate (a JSON file), date.export (an .onnx file) and date.predict (a folder).
An output file is refused when it names a folder (``out=dir/``), an input of the command (``out=`` the
checkpoint), or an existing file that is not an earlier output of the same kind (unless ``overwrite=true``); an
output folder when it is a file or holds files that are not an earlier output of the same command. The place
must be writable: a temporary file is created and removed there, as the permission bits do not stop root and
say nothing about a read-only file system.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Optional


class OutputError(ValueError):
    """An output path that would destroy something or cannot be written (refused before any work)."""


def check_output_file(value: str, *, key: str, kind: str, inputs: Mapping[str, Path], is_own: Callable[[Path], bool],
                      overwrite: bool) -> Path:
    """The path of the output file given as ``key=value``, after the checks of the module docstring.

    ``kind`` names what is written ("an evaluation JSON"); ``inputs``: {key: path} of the command's input files;
    ``is_own(path)``: whether an existing file is an earlier output of this kind (overwritten without asking).
    """
    path = Path(value).expanduser()
    if value.endswith(("/", os.sep)) or path.is_dir():
        raise OutputError(f"{key}={value} is a folder, and {key}= names the file to write ({kind}). Name a file in "
                          f"it, e.g. {key}={path / ('eval.json' if 'JSON' in kind else 'model.onnx')}.")
    for input_key, input_path in inputs.items():
        if path.resolve() == Path(input_path).expanduser().resolve():
            raise OutputError(f"{key}={value} is the input {input_key}={input_path}: writing {kind} there would "
                              f"destroy it. Name another file for {key}=.")
    if path.exists() and not overwrite and not is_own(path):
        raise OutputError(f"{key}={value} exists and is not {kind}: this command does not replace a file it did not "
                          f"write. Name another file for {key}=, or pass overwrite=true to replace it.")
    check_writable(path.parent, f"{key}={value}")
    return path


def check_output_folder(value: str, *, key: str, kind: str, is_own: Callable[[Path], bool],
                        overwrite: bool) -> Path:
    """The folder given as ``key=value``: not a file, empty or an earlier output of this command (``is_own``, else
    ``overwrite``), writable."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key}={value} is a file, and {key}= names the folder {kind} go into. Name a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite and not is_own(path):
        raise OutputError(f"{key}={value} holds files that this command did not write, and {kind} could replace "
                          f"some of them. Name a new or empty folder for {key}=, or pass overwrite=true.")
    check_writable(path, f"{key}={value}")
    return path


def check_writable(folder: Path, what: str) -> None:
    """``folder`` (or, while it does not exist, the nearest folder above it, where it would be created) accepts a new
    file; OutputError naming ``what`` and the system's reason otherwise."""
    existing = Path(folder).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, so no folder can be created under it. Pick another place.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".date-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what}: nothing can be written in {existing} ({exc.strerror or exc}). Pick a writable "
                          "place; nothing was done.") from None


def sqlite_problem(path: Path) -> Optional[str]:
    """Why the SQLite file ``path`` cannot hold an MLflow store, else None. Tried for real (a file created in its
    folder, the file opened for writing, its schema read): permission bits do not stop root and say nothing about a
    read-only file system, and MLflow itself retries such a store for minutes before its error."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".date-write-test.", dir=path.parent)  # SQLite writes its journal there
        os.close(fd)
        os.unlink(probe)
        if path.exists():
            with open(path, "r+b"):
                pass
    except OSError as exc:
        where = path if exc.filename == str(path) else path.parent  # the probe's own name would mean nothing
        return f"{where} cannot be written ({exc.strerror or exc})"
    if path.exists():
        try:
            # read-write, not read-only: a writer killed mid-transaction leaves a hot journal that the next opener
            # must roll back, and a read-only connection refuses that ("attempt to write a readonly database")
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
                db.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as exc:
            return f"SQLite cannot read {path} ({exc})"
    return None
