"""One training process per run dir: an exclusive lock on ``<run dir>/.lock`` that dies with its holder.

Two processes on one run dir would continue the same MLflow run and overwrite each other's checkpoints.
The lock is a POSIX record lock (``lockf``), so the kernel releases it when its holder exits, however it exits
(SIGKILL included): a stale lock file never blocks a resume. Not ``flock``: a flock belongs to the open file, which
the DataLoader's forked workers share, so after a SIGKILL it lived on in them for seconds and refused the resume;
a record lock belongs to the process alone. The file names its holder, for the message.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".lock"


class RunDirBusyError(RuntimeError):
    """Another process is training in this run dir."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; RunDirBusyError naming the holder if another process has it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):  # not "held by another process"
                raise
            holder = path.read_text(errors="replace").strip() or "a process that has not written its name yet"
            raise RunDirBusyError(
                f"The run dir {run_dir} is in use by another training process ({holder}): two processes would "
                "continue the same MLflow run and overwrite each other's checkpoints. Wait for it to end, stop it "
                "(kill <pid>: it writes last.pth and exits, and this command then resumes it), or train elsewhere "
                "with name=<new name>.") from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
