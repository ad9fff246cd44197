"""Where each branch is supervised, per FPN level, in POTO and DATE runs: a table and a figure from the run dirs'
``level_diagnostics.json`` (written by every training run, date/training/hooks/level_diagnostics.py).

    python experiments/level_diagnostics.py RUN_DIR [RUN_DIR ...] --out experiments/results/level_diagnostics

Writes ``level_diagnostics.md`` / ``.json`` (the share of POTO's matches on P3..P7 and the FCOS positives per image
on P3..P7, at the first, middle and last epoch of each run; the command and the commit) and
``o2o_match_share.png`` / ``.pdf`` (the o2o match share per level against epoch, one panel per run).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from date.config import ModelConfig
from date.training.hooks.level_diagnostics import FILE, LEVELS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves_by_epoch import commit_of  # noqa: E402  (experiments/ is not a package)


def load(run_dir: Path) -> dict:
    """{"run": label, "history": [...]} of one run dir (its assigner and seed from config_resolved.yaml)."""
    path = run_dir / FILE
    if not path.is_file():
        raise SystemExit(f"{path}: not found; run dirs of a training with the level diagnostics are needed")
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    return {"run": ", ".join([cfg.assigner.mode, *switches(cfg), f"{cfg.schedule.epochs} epochs", f"seed {cfg.seed}"]),
            "dir": str(run_dir), "history": json.loads(path.read_text())}


def switches(cfg) -> list[str]:
    """``key=value`` of the head switches and level ranges a run changed from the paper's build (the branch
    study's variants), in the command's spelling."""
    model, paper = cfg.get("model", {}), ModelConfig()
    changed = []
    for key in ("share_towers", "share_scales", "size_of_interest"):
        if key not in model:
            continue
        value = OmegaConf.to_container(model[key]) if OmegaConf.is_list(model[key]) else model[key]
        if value != getattr(paper, key):
            text = "[" + ",".join(f"{v:g}" for v in value) + "]" if isinstance(value, list) else str(value).lower()
            changed.append(f"{key}={text}")
    return changed


def shares(counts: list[int]) -> list[float]:
    total = max(sum(counts), 1)
    return [n / total for n in counts]


def table(runs: list[dict]) -> list[str]:
    head = "| run | epoch | images | " + " | ".join(f"o2o {p}" for p in LEVELS) + " | " + \
        " | ".join(f"o2m {p} / img" for p in LEVELS) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(LEVELS))]
    for run in runs:
        history = run["history"]
        for h in sorted({id(x): x for x in (history[0], history[len(history) // 2], history[-1])}.values(),
                        key=lambda x: x["epoch"]):
            o2o = " | ".join(f"{s:.1%}" for s in shares(h["o2o"])) if "o2o" in h else " | ".join(["–"] * len(LEVELS))
            o2m = (" | ".join(f"{n / h['images']:.2f}" for n in h["o2m"]) if "o2m" in h
                   else " | ".join(["–"] * len(LEVELS)))
            lines.append(f"| {run['run']} | {h['epoch']} | {h['images']} | {o2o} | {o2m} |")
    return lines


def figure(runs: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with_o2o = [r for r in runs if "o2o" in r["history"][0]]
    cols = min(len(with_o2o), 5)  # rows of at most five panels
    rows = -(-len(with_o2o) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(with_o2o):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, with_o2o):
        epochs = [h["epoch"] for h in run["history"]]
        per_level = list(zip(*(shares(h["o2o"]) for h in run["history"])))
        ax.stackplot(epochs, per_level, labels=LEVELS)
        ax.set_title(run["run"], fontsize=8)
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("share of POTO's matches")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"o2o_match_share.{suffix}", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", default=None, help="the command that trained the runs (recorded)")
    args = parser.parse_args(argv)
    runs = [load(d) for d in args.run_dirs]
    args.out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    commit = commit_of(repo, [Path(__file__)])
    command = "python experiments/level_diagnostics.py " + " ".join(map(str, args.run_dirs)) + f" --out {args.out}"
    lines = ["# Positives per FPN level: POTO's matches and the FCOS branch's positives", "",
             f"Made at {commit} with `{command}`" + (f", from runs trained with `{args.command}`" if args.command else ""),
             "", "o2o Pk: the share of POTO's matches (one per object) on level k over the epoch; o2m Pk / img: the "
             "FCOS branch's positive locations per image on level k. Rank 0's share of each batch.", "", *table(runs)]
    (args.out / "level_diagnostics.md").write_text("\n".join(lines) + "\n")
    (args.out / "level_diagnostics.json").write_text(json.dumps({"commit": commit, "command": command,
                                                                 "train_command": args.command, "runs": runs}, indent=1))
    figure(runs, args.out)
    print("\n".join(lines[6:]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
