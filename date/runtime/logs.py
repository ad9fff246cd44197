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


_PASSWORD_IN_URL = re.compile(r"(://[^/@:\s]*):[^/@\s]*@")


def mask_credentials(text: str) -> str:
    """``http://user:password@host`` -> ``http://user:***@host`` anywhere in ``text``: URIs end up in params,
    log lines and MLflow's error messages, which must not show the password."""
    return _PASSWORD_IN_URL.sub(r"\1:***@", text)


def examples(values: list, n: int = 5) -> str:
    """The first ``n`` values for an error message, repr'd (a string id "1" shows as '1', not as the integer 1),
    with the count when there are more."""
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def format_eta(seconds: float) -> str:
    """83.4 -> "0:01:23"."""
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def train_line(*, eta_s: float, epoch: tuple[int, int], iteration: tuple[int, int], loss: float,
               terms: Mapping[str, float], lr: float, img_per_s: float) -> str:
    """`eta: 0:01:23  epoch: 2/12  iter: 120/960  loss: 1.234  o2o/cls: 0.456 ...  lr: 4.0e-04  img/s: 18.3`.

    ``epoch`` and ``iteration`` are (current, total) pairs, as the line shows them.
    """
    parts = [f"eta: {format_eta(eta_s)}", f"epoch: {epoch[0]}/{epoch[1]}", f"iter: {iteration[0]}/{iteration[1]}",
             f"loss: {loss:.4f}"]
    parts += [f"{key}: {value:.4f}" for key, value in terms.items()]
    parts += [f"lr: {lr:.1e}", f"img/s: {img_per_s:.1f}"]
    return "  ".join(parts)


COCO_NUMBERS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def metrics_table(metrics: Mapping[str, float]) -> str:
    """The final metrics as a table: a row per COCO number, a column per evaluated branch (``val/*``: the inference
    branch; ``val/o2m/*``: DATE's o2m branch with NMS), then the other metrics. COCO writes -1 where there is nothing
    to measure (no val object of that size): shown as n/a, with a note."""
    columns = [(prefix, title) for prefix, title in (("val/", "inference branch"), ("val/o2m/", "o2m branch + NMS"))
               if f"{prefix}AP" in metrics]
    rows = [f"  {'':<7}" + "".join(f"{title:>18}" for _, title in columns)] if columns else []
    missing = False
    for name in COCO_NUMBERS if columns else ():
        cells = [metrics.get(f"{prefix}{name}") for prefix, _ in columns]
        missing |= any(v is not None and v < 0 for v in cells)
        rows.append(f"  {name:<7}" + "".join(f"{'n/a' if v is None or v < 0 else f'{v:.4f}':>18}" for v in cells))
    known = {f"{prefix}{name}" for prefix, _ in columns for name in COCO_NUMBERS}
    rows += [f"  {key}: {value:.4f}" for key, value in metrics.items() if key not in known]
    if missing:
        rows.append("  n/a: COCO's -1, no object of that size (or no detection) in the val split to measure")
    return "\n".join(rows)


class MaskedThirdParty(logging.Filter):
    """Masks a password in the URIs of other libraries' records (MLflow's, routed to the log file by
    :func:`quiet_third_party`): the job log is uploaded to the MLflow run."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in OwnInfoOnly.OWN:
            masked = mask_credentials(record.getMessage())
            if masked != record.getMessage():
                record.msg, record.args = masked, None
        return True


class OwnInfoOnly(logging.Filter):
    """Keeps other libraries' INFO records off the console (MLflow's store migrations and system-metrics chatter,
    onnxscript's ~330 lines of graph rewrites during an export); a log file's handler has no such filter."""

    OWN = ("date", "__main__", "hydra_plugins", "analysis")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in self.OWN


def quiet_third_party() -> None:
    """Route MLflow's records through the root logger (MLflow otherwise prints them itself, on stderr), hide its
    artifact progress bars, and filter the console handlers with :class:`OwnInfoOnly`. Call before mlflow is imported
    (its import reads MLFLOW_CONFIGURE_LOGGING)."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskedThirdParty())
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(OwnInfoOnly())


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
