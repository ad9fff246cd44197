"""``python -m date.data.synthetic [--stats] [key=value ...]``: generate (or find in the cache) a synthetic
benchmark, composed exactly as ``python -m date.train dataset=<preset> dataset.<key>=...`` composes it,
and print its statistics."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import tempfile
import time
from typing import Optional, Sequence

from date.cli import Entrypoint, compose_checked
from date.config import TrainConfig, validate
from date.data.build import synthetic_params
from date.data.synthetic import CACHE_ENV, describe, ensure_synthetic, resolve_cache_dir
from date.data.synthetic.cache import has_splits
from date.data.synthetic.statistics import CROWDHUMAN
from date.data.synthetic.writer import annotation_name
from date.errors import INPUT_ERRORS
from date.runtime.logs import errors_as_messages

# Bad overrides (an unknown key, a wrong type, a value out of range, an unknown --preset) are one `Error:` paragraph
# with exit code 2, as in date.train, whose config (and checks of the dataset node) this command composes.
ENTRYPOINT = Entrypoint(module="date.data.synthetic", config_name="config", schema=TrainConfig, check_config=validate,
                        keys_listed_by="python -m date.train --help")


def _dataset_key(override: str) -> str:
    """A dataset key may be written short (num_train=500, +num_train=...) or as date.train takes it; model.* as is."""
    prefix, rest = re.fullmatch(r"([+~]*)(.*)", override, flags=re.S).groups()
    return override if rest.startswith(("model.", "dataset.")) else f"{prefix}dataset.{rest}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m date.data.synthetic",
        description="Generate (or find in the cache) the synthetic benchmark and print its statistics.",
    )
    parser.add_argument("--preset", default="synthetic", help="dataset=<preset> (conf/dataset/; default: synthetic)")
    parser.add_argument("--stats", action="store_true", help="print statistics of both splits")
    parser.add_argument("--fresh", action="store_true",
                        help="generate into a temporary cache (timing a cold generation) instead of the real one")
    parser.add_argument("--cache-dir", default=None, help="overrides dataset.cache_dir and $" + CACHE_ENV)
    parser.add_argument("overrides", nargs="*",
                        help="dataset keys, e.g. num_train=500 (or dataset.num_train=500), or model.size_of_interest=[...]")
    args = parser.parse_args(argv)
    with errors_as_messages(dict.fromkeys(INPUT_ERRORS, 2)):
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    # an override of model.size_of_interest=[...] (the FCOS ranges the statistics use) passes as it is
    composed = compose_checked(ENTRYPOINT, [f"dataset={args.preset}", *map(_dataset_key, args.overrides)])
    cfg = composed.dataset
    params = synthetic_params(cfg)  # range checks, and the scene against the preset's kind
    with contextlib.ExitStack() as stack:
        cache = args.cache_dir or cfg.cache_dir
        if args.fresh:
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="date-synthetic-"))
        folder = resolve_cache_dir(cache) / "synthetic" / params.folder_name()
        existed = has_splits(params, folder, ("train", "val"))
        start = time.perf_counter()
        root = ensure_synthetic(params, cache_dir=cache)
        elapsed = time.perf_counter() - start
        print(f"dataset: {root if not args.fresh else params.folder_name() + ' (temporary)'}")
        print(f"parameters: {json.dumps(dataclasses.asdict(params))}")
        print(f"found in cache ({elapsed:.2f} s)" if existed else f"generated in {elapsed:.2f} s")
        if args.stats:
            for split in ("train", "val"):
                stats = describe(root / annotation_name(params, split),
                                 size_of_interest=list(composed.model.size_of_interest),
                                 center_sampling_radius=composed.assigner.fcos_center_sampling)
                print(f"--- {split}")
                for k, v in stats.items():
                    if k != "ann_file":
                        print(f"{k}: {v}")
                if params.scene == "crowd":
                    print(f"CrowdHuman (train, full boxes): {CROWDHUMAN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
