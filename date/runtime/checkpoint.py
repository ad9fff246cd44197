"""Checkpoints and run files: atomic writes, safe loads (``torch.load(weights_only=True)``) and RNG state.

``last.pth`` (resumable training state) holds only tensors, numbers, strings, lists and dicts, so it
loads with ``weights_only=True``: no pickled code runs when a checkpoint is opened.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np
import torch

LAST = "last.pth"
FINAL = "model_final.pth"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the current run."""


class SaveError(OSError):
    """A run file could not be written (disk full, quota, file-size limit); the previous version is intact."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` so that a reader (or a kill) sees the old or the new file, never half."""
    write_atomic(path, lambda f: torch.save(obj, f))


def write_atomic(path: Path, write: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``path`` (text, bytes, or what ``write(binary file)`` writes) atomically: the old or the new file.

    The temporary file lives in the same directory (same file system, so ``os.replace`` is atomic) and
    is fsync'ed before the rename; the directory is fsync'ed after it so the rename itself is durable.
    A failed write (SaveError naming the path and the free space) leaves the previous file untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os_error = _os_error(exc)
        if os_error is None:
            raise
        raise SaveError(_save_failure(path, os_error)) from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind ``exc`` (torch.save reports a failed write as a RuntimeError raised while handling it)."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _save_failure(path: Path, error: OSError) -> str:
    free = shutil.disk_usage(path.parent).free
    kept = "the previous one is intact" if path.exists() else "there was none before"
    return (f"Could not write {path}: {error.strerror or error} ({free / 2**30:.2f} GiB free on its file system). "
            f"That file is unchanged ({kept}). Free some space (or raise the quota / file-size limit) and rerun the "
            "same command: training resumes from the last checkpoint.")


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by this module, on the CPU, without unpickling code."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint {path} does not exist.") from None
    except Exception as exc:  # corrupt file, or a pickle that is not plain data
        raise CheckpointError(f"Cannot read checkpoint {path}: {load_error_reason(exc)}. "
                              "It is not a DATE checkpoint or the file is damaged.") from None


def load_error_reason(exc: Exception) -> str:
    """Why torch.load(weights_only=True) failed, in one line, without torch's advice to load unsafely."""
    if isinstance(exc, pickle.UnpicklingError):  # torch's text advises weights_only=False: not here
        return "torch.load(weights_only=True) refuses it (not plain tensors, numbers and strings)"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(". :")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): the model init and anything else drawn in-process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) RNG states as tensors, ints, floats and lists."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
