"""Where generated and derived data is cached (the synthetic benchmark, CrowdHuman's image sizes of a read-only
dataset): one rule for every dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

CACHE_ENV = "DATE_DATA_CACHE"


def resolve_cache_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """The data cache: ``cache_dir`` if given, else $DATE_DATA_CACHE, else the user cache dir ($XDG_CACHE_HOME or
    ~/.cache) + ``/date``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "date"
