"""Log-line formatting (detectron2 style) and small logging helpers; no global state beyond `logging`."""
from __future__ import annotations

import datetime
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Optional


def examples(values: list, n: int = 5) -> str:
    """The first ``n`` values for an error message, repr'd (a string id "1" shows as '1', not as the integer 1),
    with the count when there are more."""
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def format_eta(seconds: float) -> str:
    """83.4 -> "0:01:23"."""
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def train_line(*, eta_s: float, iteration: int, total_iters: int, loss: float, terms: Mapping[str, float],
               lr: float, img_per_s: float) -> str:
    """`eta: 0:01:23  iter: 120/960  loss: 1.234  o2o/cls: 0.456 ...  lr: 4.0e-04  img/s: 18.3`."""
    parts = [f"eta: {format_eta(eta_s)}", f"iter: {iteration}/{total_iters}", f"loss: {loss:.4f}"]
    parts += [f"{key}: {value:.4f}" for key, value in terms.items()]
    parts += [f"lr: {lr:.1e}", f"img/s: {img_per_s:.1f}"]
    return "  ".join(parts)


def log_to_rank_file(rank: int) -> Optional[Path]:
    """Give a DDP process other than rank 0 its own job log: ``train.log`` -> ``train_rank<r>.log``.

    Every process of a torchrun or multi-task SLURM job runs the same Hydra task, so Hydra points all
    of their file handlers at the one job log; rank 0 keeps it. Returns the file this process logs to.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            if rank == 0:
                return Path(handler.baseFilename)
            path = Path(handler.baseFilename)
            own = logging.FileHandler(path.with_name(f"{path.stem}_rank{rank}{path.suffix}"))
            own.setLevel(handler.level)
            own.setFormatter(handler.formatter)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(own)
            return Path(own.baseFilename)
    return None


def log_to_file(path: Path) -> None:
    """Also write the root logger's records to ``path``, formatted as its first handler formats them (the console's);
    for entrypoints whose log file goes into their own output folder, once that folder is known to be theirs."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)


def job_log_file() -> Optional[Path]:
    """The file the root logger writes to (Hydra's `<run dir>/<job name>.log`), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.flush()
            return Path(handler.baseFilename)
    return None


def report_error(message: str) -> None:
    """Show a user-facing error on stderr (no traceback) and record it in the job log file."""
    print(f"Error: {message}", file=sys.stderr, flush=True)
    record = logging.LogRecord("date", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def original_message(exc: BaseException) -> str:
    """The message of ``exc`` as its raiser wrote it. An error raised in a DataLoader worker reaches the main
    process re-created with "Caught X in DataLoader worker process N. Original Traceback ..." and the whole
    worker traceback as its message: the original is the text after the traceback's last "module.X: "."""
    message = str(exc)
    if not re.match(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", message):
        return message
    marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    start = message.rfind(marker)
    return message[start + len(marker):].strip() if start >= 0 else message


@contextmanager
def errors_as_messages(exit_codes: Mapping[type, int]):
    """Turn the listed exception types into a one-paragraph message on stderr and their exit code
    (instead of a traceback of internals); HYDRA_FULL_ERROR=1 re-raises them for debugging."""
    try:
        yield
    except tuple(exit_codes) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report_error(original_message(exc))
        sys.exit(next(code for kind, code in exit_codes.items() if isinstance(exc, kind)))
