"""Where generated datasets live, and generating a missing split there once, atomically, under a file lock.

Layout of the cache (one folder per parameter set, keyed by their hash)::

    <cache>/synthetic/<name>/                       <cache>/synthetic/crowd-<name>/   (scene=crowd)
        instances_train.json   instances_val.json       annotation_train.odgt   annotation_val.odgt
        train/000000.png ...   val/000000.png ...       Images/train-000000.jpg ... Images/val-000000.jpg ...
        params.json                                     params.json

A split is generated when first needed (evaluation generates val alone) and is complete once its annotation file
(writer.annotation_name) exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from date.data.cache_dir import CACHE_ENV, resolve_cache_dir
from date.data.errors import DatasetError

from .params import GENERATOR_VERSION, SyntheticParams
from .writer import annotation_name, image_folder, write_split

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock, so that concurrent ranks/jobs generate a dataset once (others wait)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): the atomic rename alone keeps results consistent
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def has_splits(params: SyntheticParams, folder: Path, splits: Sequence[str]) -> bool:
    """Whether every split in ``splits`` is complete: its annotation file is moved in last."""
    return all((folder / annotation_name(params, split)).is_file() for split in splits)


def _add_split(params: SyntheticParams, split: str, final: Path, *, workers: int, progress: bool) -> None:
    """Generate one split into a temporary sibling folder, then move its images and, last, its JSON into ``final``."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-{split}-", dir=final.parent))
    try:
        write_split(params, split, tmp, workers=workers, progress=progress)
        params_blob = {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(params)}
        (tmp / "params.json").write_text(json.dumps(params_blob, indent=1, sort_keys=True) + "\n")
        final.mkdir(exist_ok=True)
        os.replace(tmp / "params.json", final / "params.json")
        images = image_folder(params, split)
        if images == split:  # a folder of its own
            shutil.rmtree(final / split, ignore_errors=True)  # images of a generation killed between the two moves
            os.rename(tmp / split, final / split)
        else:  # one folder for both splits (the crowd layout): the split's files move in one by one
            (final / images).mkdir(exist_ok=True)
            for image in (tmp / images).iterdir():
                os.replace(image, final / images / image.name)
        os.rename(tmp / annotation_name(params, split), final / annotation_name(params, split))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_synthetic(
    params: SyntheticParams,
    *,
    cache_dir: Optional[str | os.PathLike] = None,
    progress: bool = True,
    workers: Optional[int] = None,
    splits: Sequence[str] = ("train", "val"),
) -> Path:
    """Return the dataset folder for ``params``, generating the ``splits`` it does not hold yet.

    Only the splits asked for are generated (evaluation needs val alone); a split generated later is
    byte-identical to one generated with the other. Each split is written into a temporary sibling
    folder and moved into place, its annotation file last, so a killed generation never leaves a
    split that looks complete. ``workers`` (processes; default: 1 for small sets, up to 8 for large
    ones) does not change the output.
    """
    base = resolve_cache_dir(cache_dir) / "synthetic"
    final = base / params.folder_name()
    if has_splits(params, final, splits):
        return final
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"Cannot create the synthetic dataset cache folder {base}: {e}. Point dataset.cache_dir "
            f"(or the {CACHE_ENV} environment variable) at a writable folder."
        ) from e
    with file_lock(base / f"{final.name}.lock"):
        # another process may have added some while this one waited for the lock
        missing = [split for split in splits if not has_splits(params, final, [split])]
        if not missing:
            return final
        for stale in base.glob(f"{final.name}.tmp-*"):  # left by a killed generation
            shutil.rmtree(stale, ignore_errors=True)
        total = sum(params.num_train if split == "train" else params.num_val for split in missing)
        if workers is None:
            workers = 1 if total < 2000 else min(8, os.cpu_count() or 1)
        start = time.perf_counter()
        for split in missing:
            _add_split(params, split, final, workers=workers, progress=progress)
        logger.info("generated the %s split(s) of synthetic dataset %s in %.1f s", "+".join(missing), final,
                    time.perf_counter() - start)
    return final
