"""The configuration schema: one dataclass per Hydra config group, plus the top level.

Registered in Hydra's ConfigStore as ``config_schema`` (first entry of conf/config.yaml's defaults
list), so a misspelled key or a wrongly typed value fails at composition with Hydra's own message.
Value ranges (``schedule.epochs=-1``) cannot be expressed as types: :func:`validate` checks them right
after composition, before anything expensive, and raises one :class:`ConfigError` listing them all.

Only date/train.py, date/evaluate.py and the builders read these objects; every other module takes
plain keyword arguments.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from date.branch_weighting import O2M_SCHEDULES, BranchWeighting
from date.data.build import DatasetConfig

LOSS_TERMS = ("o2o/cls", "o2o/l1", "o2o/giou", "o2m/cls", "o2m/iou", "o2m/ctr")
# Keys that may differ when a run resumes (they do not change what is trained, or only how it runs).
# All but device/amp are also left out of the run-dir name (conf/config.yaml,
# hydra.job.config.override_dirname.exclude_keys), so `log_every=1` still finds the same run dir.
RESUME_SAFE_KEYS = ("name", "resume", "num_workers", "log_every", "eval_every", "checkpoint_every_iters",
                    "tracking.uri", "tracking.experiment", "device", "amp")


class ConfigError(ValueError):
    """A composed configuration that is well-typed but makes no sense (a value out of range, ...)."""


@dataclass
class BackboneConfig:
    depth: int = 18
    weights: str = "none"
    fpn_channels: int = 128


@dataclass
class AssignerConfig:
    mode: str = "dual"
    o2m: str = "fcos"
    poto_alpha: float = 0.8
    poto_center_radius: float = 1.5
    fcos_center_sampling: Optional[float] = None
    topk: int = 10
    topk_alpha: float = 0.5
    topk_beta: float = 6.0


@dataclass
class ModelConfig:
    num_convs: int = 4
    use_3dmf: bool = False
    prior_prob: float = 0.01
    score_thresh: float = 0.01
    topk_candidates: int = 100
    detections_per_img: int = 100
    nms_thresh: float = 0.6
    size_of_interest: List[float] = MISSING
    loss_weights: Dict[str, float] = field(default_factory=lambda: {
        "o2o/cls": 2.0, "o2o/l1": 5.0, "o2o/giou": 2.0, "o2m/cls": 1.0, "o2m/iou": 1.0, "o2m/ctr": 1.0})


@dataclass
class BranchWeightingConfig:
    """Mirrors date.branch_weighting.BranchWeighting's fields (a test keeps the two in sync)."""

    o2m: float = 1.0
    o2o: float = 1.0
    o2m_schedule: str = "constant"
    o2m_until: float = 1.0
    o2o_warmup: float = 0.0


@dataclass
class ScheduleConfig:
    epochs: int = 12
    lr_steps: List[int] = field(default_factory=lambda: [8, 11])
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001
    augmentation: str = "1x"
    max_iters: Optional[int] = None


@dataclass
class OptimConfig:
    lr: float = 4.0e-4
    weight_decay: float = 1.0e-4
    backbone_lr_mult: float = 0.1
    clip_grad_norm: Optional[float] = 0.1


@dataclass
class TrackingConfig:
    uri: Optional[str] = None
    experiment: str = "date"


@dataclass
class TrainConfig:
    backbone: BackboneConfig = MISSING
    assigner: AssignerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    branch_weighting: BranchWeightingConfig = MISSING
    dataset: DatasetConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    name: str = "date"
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    batch_size: int = 8
    num_workers: int = 2
    eval_every: int = 1
    checkpoint_every_iters: int = 0
    log_every: int = 20
    resume: bool = True


@dataclass
class EvaluateConfig:
    """Schema of conf/evaluate.yaml (``python -m date.evaluate checkpoint=...``)."""

    checkpoint: str = MISSING
    dataset: Optional[Dict[str, Any]] = None
    device: str = "auto"
    amp: str = "auto"
    batch_size: int = 8
    num_workers: int = 2
    output: Optional[str] = None


def register() -> None:
    """Put the schemas into Hydra's ConfigStore and the run-dir resolver into OmegaConf."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    if not OmegaConf.has_resolver("date.run_name"):
        OmegaConf.register_new_resolver("date.run_name", run_name)


def run_name(override_dirname: str) -> str:
    """A directory name for one run from Hydra's ``override_dirname`` ("assigner=o2o,seed=1").

    "=" -> "-" and "," -> "_" ("assigner-o2o_seed-1"), any other character outside [A-Za-z0-9._+-]
    (a "/" in a path value, list brackets) -> "_", so the path can be typed unquoted in Hydra
    overrides (``checkpoint=outputs/...``); "defaults" when nothing is overridden. Names too long for a
    file system keep their start plus a hash of the whole, so distinct overrides stay distinct.
    """
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", override_dirname.replace("=", "-").replace(",", "_")) or "defaults"
    if len(name) > 160:
        name = name[:140] + "-" + hashlib.sha1(override_dirname.encode()).hexdigest()[:12]
    return name


def amp_setting(value: Any) -> str:
    """Normalise ``amp``: Hydra parses ``amp=true`` as a bool, the str field then holds "True"."""
    return str(value).strip().lower()


def _check(problems: list[str], ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        problems.append(f"{key}={value!r}: expected {expected}")


def validate(cfg: DictConfig) -> None:
    """Check value ranges of a composed training config; raise ConfigError listing every problem.

    Hydra and the schema already caught unknown keys, unknown group options and wrong types.
    """
    p: list[str] = []
    b, a, m, s, o = cfg.backbone, cfg.assigner, cfg.model, cfg.schedule, cfg.optim
    _check(p, b.depth in (18, 34, 50, 101), "backbone.depth", b.depth, "one of 18, 34, 50, 101")
    _check(p, b.fpn_channels > 0, "backbone.fpn_channels", b.fpn_channels, "> 0")
    if b.weights not in ("none", "imagenet"):
        _check(p, Path(b.weights).expanduser().is_file(), "backbone.weights", b.weights,
               "'none', 'imagenet' or the path of an existing .pth file")
    _check(p, a.mode in ("o2m", "o2o", "dual"), "assigner.mode", a.mode, "one of o2m, o2o, dual")
    _check(p, a.o2m in ("fcos", "topk"), "assigner.o2m", a.o2m, "one of fcos, topk")
    _check(p, 0.0 <= a.poto_alpha <= 1.0, "assigner.poto_alpha", a.poto_alpha, "a number in [0, 1]")
    _check(p, a.poto_center_radius > 0, "assigner.poto_center_radius", a.poto_center_radius, "> 0")
    _check(p, a.fcos_center_sampling is None or a.fcos_center_sampling > 0, "assigner.fcos_center_sampling",
           a.fcos_center_sampling, "null (off) or a radius > 0 in strides")
    _check(p, a.topk >= 1, "assigner.topk", a.topk, ">= 1")
    _check(p, m.num_convs >= 0, "model.num_convs", m.num_convs, ">= 0")
    _check(p, 0.0 < m.prior_prob < 1.0, "model.prior_prob", m.prior_prob, "a probability in (0, 1)")
    _check(p, 0.0 <= m.score_thresh < 1.0, "model.score_thresh", m.score_thresh, "a number in [0, 1)")
    _check(p, m.topk_candidates >= 1, "model.topk_candidates", m.topk_candidates, ">= 1")
    _check(p, m.detections_per_img >= 1, "model.detections_per_img", m.detections_per_img, ">= 1")
    _check(p, 0.0 < m.nms_thresh <= 1.0, "model.nms_thresh", m.nms_thresh, "an IoU in (0, 1]")
    unknown = sorted(set(m.loss_weights) - set(LOSS_TERMS))
    _check(p, not unknown, "model.loss_weights", unknown, f"keys among {list(LOSS_TERMS)}")
    _check(p, all(w >= 0 for w in m.loss_weights.values()), "model.loss_weights", dict(m.loss_weights),
           "weights >= 0")
    _check(p, s.epochs >= 1, "schedule.epochs", s.epochs, "an integer >= 1 (e.g. schedule.epochs=12)")
    _check(p, all(1 <= e <= max(s.epochs, 1) for e in s.lr_steps) and list(s.lr_steps) == sorted(s.lr_steps),
           "schedule.lr_steps", list(s.lr_steps), f"increasing epochs within [1, schedule.epochs={s.epochs}]")
    _check(p, s.warmup_iters >= 0, "schedule.warmup_iters", s.warmup_iters, ">= 0")
    _check(p, 0.0 < s.warmup_ratio <= 1.0, "schedule.warmup_ratio", s.warmup_ratio, "a number in (0, 1]")
    _check(p, s.augmentation in ("1x", "3x"), "schedule.augmentation", s.augmentation, "'1x' or '3x'")
    _check(p, s.max_iters is None or s.max_iters >= 1, "schedule.max_iters", s.max_iters, "null or >= 1")
    _check(p, o.lr > 0, "optim.lr", o.lr, "> 0")
    _check(p, o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
    _check(p, o.backbone_lr_mult >= 0, "optim.backbone_lr_mult", o.backbone_lr_mult, ">= 0")
    _check(p, o.clip_grad_norm is None or o.clip_grad_norm > 0, "optim.clip_grad_norm", o.clip_grad_norm,
           "null (no clipping) or > 0")
    try:
        BranchWeighting(**branch_weighting_kwargs(cfg.branch_weighting))
    except ValueError as exc:
        p.append(f"{exc} (o2m_schedule is one of {O2M_SCHEDULES})")
    _check(p, cfg.seed >= 0, "seed", cfg.seed, ">= 0")
    _check(p, re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.device) is not None, "device", cfg.device,
           "auto, cpu, cuda or cuda:N")
    _check(p, amp_setting(cfg.amp) in ("auto", "true", "false"), "amp", cfg.amp, "auto, true or false")
    _check(p, cfg.batch_size >= 1, "batch_size", cfg.batch_size, ">= 1")
    _check(p, cfg.num_workers >= 0, "num_workers", cfg.num_workers, ">= 0")
    _check(p, cfg.eval_every >= 1, "eval_every", cfg.eval_every, ">= 1 (epochs)")
    _check(p, cfg.checkpoint_every_iters >= 0, "checkpoint_every_iters", cfg.checkpoint_every_iters,
           ">= 0 (0: only at the end of each epoch)")
    _check(p, cfg.log_every >= 1, "log_every", cfg.log_every, ">= 1 (iterations)")
    _check(p, bool(cfg.tracking.experiment), "tracking.experiment", cfg.tracking.experiment, "a non-empty name")
    _check(p, bool(cfg.name) and "/" not in cfg.name, "name", cfg.name, "a non-empty name without '/'")
    if p:
        raise ConfigError("Invalid configuration: " + "; ".join(p) + ". Fix these values on the command line "
                          "(key=value) or in conf/; `python -m date.train --cfg job` prints the composed config.")


def branch_weighting_kwargs(node: Any) -> dict[str, Any]:
    """The BranchWeighting keyword arguments from the ``branch_weighting`` config node."""
    return {f.name: node[f.name] for f in fields(BranchWeightingConfig)}


def resume_mismatches(saved: dict, current: dict) -> list[str]:
    """Config keys whose values differ between a checkpoint's config and this run's (ignoring
    RESUME_SAFE_KEYS), as "key: saved -> current" strings."""
    old, new = flatten(saved), flatten(current)
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in RESUME_SAFE_KEYS]


def flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    """{"backbone": {"depth": 18}} -> {"backbone.depth": 18}; lists stay values."""
    if isinstance(container, dict):
        out: dict[str, Any] = {}
        for key, value in container.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: container}


register()
