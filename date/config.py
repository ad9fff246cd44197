"""The configuration schemas: the one home of every key of every entrypoint, with its default, its comment and its
check: training (TrainConfig), evaluate, predict, export and crowdhuman_eval (EvaluateConfig, ...).

Registered in Hydra's ConfigStore as ``config_schema`` (first entry of conf/config.yaml's defaults list),
``evaluate_schema``, ``predict_schema``, ... (of conf/evaluate.yaml, ...: those files hold only Hydra's settings).
A group option (conf/<group>/<option>.yaml) holds only what makes that option different; an experiment
(conf/experiment/*.yaml) only overrides groups and keys. ``python -m date.train --cfg job`` prints the
composed result. Hydra refuses unknown keys, wrong types and values outside a closed set (the enums);
:func:`validate` then checks the ranges written beside each field, before anything expensive, and raises
one :class:`ConfigError` listing every problem.

Two groups have their schema next to the code they configure: ``dataset`` (date.data.build.DatasetConfig, whose
generation fields are date.data.synthetic.SyntheticParams) and ``branch_weighting`` (date.branch_weighting's class).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from date.branch_weighting import BranchWeighting
from date.choice import Choice
from date.data.build import DatasetConfig
from date.data.transforms import Augmentation

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the config groups (python -m date.train's config_path)
LOSS_TERMS = ("o2o/cls", "o2o/l1", "o2o/giou", "o2m/cls", "o2m/iou", "o2m/ctr")


@functools.cache
def run_dir_excluded_keys() -> tuple[str, ...]:
    """The keys that do not change what is trained: left out of the run-dir name, so that `log_every=1` still finds
    the same run dir. Their one list: conf/config.yaml, hydra.job.config.override_dirname.exclude_keys (Hydra reads
    it there). Read on first use, not at import: a logged model's code (date/ alone) imports this module."""
    return tuple(OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys)


def resume_safe_keys() -> tuple[str, ...]:
    """Keys that may differ when a run resumes: the run-dir-excluded ones, and how it runs (these three do name the
    run dir)."""
    return (*run_dir_excluded_keys(), "device", "amp", "channels_last")


class ConfigError(ValueError):
    """A composed configuration that is well-typed but makes no sense (a value out of range, ...)."""


class Mode(Choice):
    """Which branches train: the FCOS baseline, the POTO baseline, or DATE (both; o2o alone at inference)."""

    o2m = "o2m"
    o2o = "o2o"
    dual = "dual"


class O2MRule(Choice):
    """The one-to-many assignment: FCOS's (inside the box + level range) or YOLOv10's consistent top-k."""

    fcos = "fcos"
    topk = "topk"


class BoxCoding(Choice):
    """How the o2m branch turns its box output x into ltrb distances."""

    exp = "exp"  # exp(scale * x) pixels: the paper's FCOS
    linear = "linear"  # relu(scale * x) * stride: torchvision's FCOS (and the o2o branch)


class O2MBoxLoss(Choice):
    """The o2m branch's box term ("o2m/iou")."""

    log_iou = "log_iou"  # -log IoU weighted by the centerness targets, / their sum: the paper's FCOS
    giou = "giou"  # 1 - GIoU, / the positives, unweighted: torchvision's FCOS


BRANCHES = {Mode.o2m: ("o2m",), Mode.o2o: ("o2o",), Mode.dual: ("o2o", "o2m")}  # what each mode trains


def checked(default: Any, ok: Callable[[Any], bool], expected: str) -> Any:
    """A schema field whose value must satisfy ``ok``; ``expected`` says what it must be (in the error)."""
    mutable = isinstance(default, (list, dict))
    kwargs = {"default_factory": lambda: copy.deepcopy(default)} if mutable else {"default": default}
    return field(metadata={"ok": ok, "expected": expected}, **kwargs)


def positive(default: Any) -> Any:
    return checked(default, lambda v: v > 0, "> 0")


def at_least(default: Any, low: int) -> Any:
    return checked(default, lambda v: v >= low, f">= {low}")


def in_unit_interval(default: Any) -> Any:
    return checked(default, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def device_field() -> Any:
    """The ``device`` key of every entrypoint: auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps."""
    return checked("auto", lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None,
                   "auto, cpu, cuda or cuda:N")


def amp_field() -> Any:
    """The ``amp`` key of every entrypoint: bf16 autocast auto (on with CUDA, off on CPU) | true | false."""
    return checked("auto", lambda v: amp_setting(v) in ("auto", "true", "false"), "auto, true or false")


def _weights_ok(value: str) -> bool:
    return value in ("none", "imagenet") or Path(value).expanduser().is_file()


@dataclass
class BackboneConfig:
    depth: int = checked(MISSING, lambda v: v in (18, 34, 50, 101), "one of 18, 34, 50, 101")  # ResNet depth
    # none (from scratch) | imagenet (torchvision download) | /path/to/resnetNN.pth (offline clusters)
    weights: str = checked("none", _weights_ok, "'none', 'imagenet' or the path of an existing .pth file")
    fpn_channels: int = positive(256)  # FPN and head width D (the paper's 256)


@dataclass
class AssignerConfig:
    mode: Mode = MISSING  # branches trained: o2m (FCOS) | o2o (POTO) | dual (DATE)
    o2m: O2MRule = O2MRule.fcos  # one-to-many rule: fcos | topk
    poto_alpha: float = in_unit_interval(0.8)  # POTO quality p^(1-alpha) * IoU^alpha
    poto_center_radius: float = positive(1.5)  # POTO centre prior: gt centre +- radius * the level's stride
    # FCOS centre sampling radius in strides; null = the whole box (DATE's setting)
    fcos_center_sampling: Optional[float] = checked(None, lambda v: v is None or v > 0, "null (off) or a radius > 0")
    topk: int = at_least(10, 1)  # topk rule: positives per gt
    topk_alpha: float = 0.5  # topk rule: exponent of the classification score
    topk_beta: float = 6.0  # topk rule: exponent of the IoU


def _loss_weights_ok(weights: Any) -> bool:
    return set(weights) == set(LOSS_TERMS) and all(w >= 0 for w in weights.values())


@dataclass
class ModelConfig:
    num_convs: int = at_least(4, 0)  # conv-GN-ReLU blocks in each of the two shared head towers
    use_3dmf: bool = False  # true: DeFCN's 3D max filtering on the o2o scores (DATE-F-3DMF)
    share_towers: bool = True  # both branches on the same towers (the paper; the official share_stacked_convs)
    share_scales: bool = True  # both branches on the same per-level Scales (the paper; kept by share_towers=false)
    o2m_box_coding: BoxCoding = BoxCoding.exp  # o2m ltrb: exp (the paper) | linear (torchvision)
    o2m_box_loss: O2MBoxLoss = O2MBoxLoss.log_iou  # o2m box term: log_iou (the paper) | giou (torchvision)
    o2m_detach: bool = False  # diagnostic: the o2m loss trains only the o2m predictors (no shared gradient)
    prior_prob: float = checked(0.01, lambda v: 0.0 < v < 1.0, "a probability in (0, 1)")  # classifier bias init
    score_thresh: float = checked(0.01, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")  # inference: drop pairs below
    topk_candidates: int = at_least(100, 1)  # inference: (location, class) pairs kept per FPN level
    detections_per_img: int = at_least(100, 1)  # inference: detections kept per image
    nms_thresh: float = checked(0.6, lambda v: 0.0 < v <= 1.0, "an IoU in (0, 1]")  # NMS IoU, FCOS baseline only
    # FCOS: the boundaries of max(l, t, r, b) between the ranges of P3..P7, in input pixels: the paper's
    # (-1, 64], (64, 128], (128, 256], (256, 512], (512, inf): each level's upper bound is 8x its stride, whatever
    # the image size, so that the o2m branch gets dense supervision (`python -m date.data.synthetic --stats`)
    size_of_interest: List[float] = checked([64.0, 128.0, 256.0, 512.0], lambda v: len(v) == 4 and list(v) == sorted(v),
                                            "4 increasing boundaries (P3|P4, P4|P5, P5|P6, P6|P7)")
    # per-term weights (DATE's table); override as 'model.loss_weights={o2o/cls:2.0,...}'
    loss_weights: Dict[str, float] = checked(
        {"o2o/cls": 2.0, "o2o/l1": 5.0, "o2o/giou": 2.0, "o2m/cls": 1.0, "o2m/iou": 1.0, "o2m/ctr": 1.0},
        _loss_weights_ok, f"a weight >= 0 for each of {list(LOSS_TERMS)}")


@dataclass
class ScheduleConfig:
    epochs: int = at_least(MISSING, 1)  # training epochs
    lr_steps: List[int] = MISSING  # epochs after which the lr is multiplied by 0.1
    augmentation: Augmentation = MISSING  # 1x: resize + flip | 3x: DETR-style multi-scale + crop
    warmup_iters: int = at_least(1000, 0)  # linear warm-up iterations (capped at one epoch on small datasets)
    warmup_ratio: float = checked(0.001, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")  # lr factor at iteration 0
    max_iters: Optional[int] = checked(None, lambda v: v is None or v >= 1, "null or >= 1")  # stop early (then evaluate)

    @staticmethod
    def cross_checks(node: Any) -> list[str]:
        steps = list(node.lr_steps)
        if steps == sorted(steps) and all(1 <= e <= node.epochs for e in steps):
            return []
        return [f"schedule.lr_steps={steps}: expected increasing epochs within [1, schedule.epochs={node.epochs}]"]


@dataclass
class OptimConfig:  # AdamW
    lr: float = positive(4.0e-4)  # for 16 images per step; scaled by batch_size * world_size / 16
    weight_decay: float = at_least(1.0e-4, 0)  # not applied to norm weights and biases (1-d parameters)
    # lr multiplier of a pretrained ResNet body (FPN and head: full lr); from scratch the body trains at full lr
    backbone_lr_mult: float = at_least(0.1, 0)
    # max L2 norm of all gradients together; null = no clipping
    clip_grad_norm: Optional[float] = checked(0.1, lambda v: v is None or v > 0, "null (no clipping) or > 0")


@dataclass
class TrackingConfig:  # MLflow
    # null: $MLFLOW_TRACKING_URI, else sqlite:///$DATE_HOME/mlflow.db (DATE_HOME ~/.local/share/date); or http://...
    uri: Optional[str] = None
    experiment: str = checked("date", bool, "a non-empty name")  # MLflow experiment name
    # MLflow's system/* metrics (CPU, memory, disk, network) sampled every 10 s into the run
    # ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides); GPU ones only where pynvml is installed
    system_metrics: bool = True
    # the final detector logged to the run as an MLflow pyfunc model (~1 s; the checkpoint's size in the store)
    log_model: bool = True


def amp_setting(value: Any) -> str:
    """Normalise ``amp``: Hydra parses ``amp=true`` as a bool, the str field then holds "True"."""
    return str(value).strip().lower()


@dataclass
class TrainConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    assigner: AssignerConfig = field(default_factory=AssignerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    branch_weighting: BranchWeighting = field(default_factory=BranchWeighting)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # experiment label: runs go to outputs/<name>/..., sweeps to multirun/<name>/...
    name: str = checked("date", lambda v: bool(v) and "/" not in v, "a non-empty name without '/'")
    seed: int = at_least(0, 0)  # seeds torch, numpy, random and the data order; same seed on CPU = same run
    device: str = device_field()  # auto: cuda if available, else cpu
    amp: str = amp_field()  # bf16 autocast: auto (on with CUDA, off on CPU) | true | false
    channels_last: bool = True  # NHWC model and images: 1.15x faster CPU steps; other arithmetic, another variant
    batch_size: int = at_least(8, 1)  # images per process per step
    num_workers: int = at_least(2, 0)  # data-loading processes per training process (0: the main process)
    # COCO evaluation every N epochs (and always at the end); 3 keeps the CPU main job in its budget, studies set 1
    eval_every: int = at_least(3, 1)
    # Evaluations before the last use only the first N val images (a fixed random sample: the synthetic generator
    # draws each image independently) to keep a 1,000-image split affordable; the last uses all. null: all, always
    eval_subset: Optional[int] = checked(100, lambda v: v is None or v >= 1, "null or >= 1")
    eval_o2m_branch: bool = False  # dual: also evaluate the o2m branch (+ NMS) as val/o2m/* (a diagnostic)
    checkpoint_every_iters: int = at_least(0, 0)  # also write last.pth every N iterations (0: at epoch ends only)
    log_every: int = at_least(20, 1)  # log line + MLflow train/* metrics every N iterations (and at the last)
    resume: bool = True  # continue from <run dir>/last.pth if it exists; false: start over there

    @staticmethod
    def cross_checks(node: Any) -> list[str]:
        if node.model.use_3dmf and node.assigner.mode == Mode.o2m:
            return ["model.use_3dmf=true filters the one-to-one scores: it needs assigner=o2o or dual, not o2m"]
        return []


@dataclass
class EvaluateConfig:
    """Schema of conf/evaluate.yaml (``python -m date.evaluate checkpoint=...``)."""

    checkpoint: str = MISSING  # a model_final.pth or last.pth written by date.train (required)
    dataset: Optional[Dict[str, Any]] = None  # null: the dataset stored in the checkpoint
    device: str = device_field()  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    amp: str = amp_field()  # bf16 autocast: auto (on with CUDA, off on CPU) | true | false
    batch_size: int = at_least(8, 1)  # images per forward pass
    num_workers: int = at_least(2, 0)  # data-loading processes (0: the main process)
    out: Optional[str] = None  # also write {"AP": ..., ...} as JSON to this file (refused: the checkpoint, a folder)
    overwrite: bool = False  # true: out= may replace an existing file that is not an earlier evaluation JSON
    # FCOS (assigner=o2m): NMS at this IoU instead of the checkpoint's model.nms_thresh (null: the checkpoint's)
    nms_thresh: Optional[float] = checked(None, lambda v: v is None or 0.0 < v <= 1.0, "an IoU in (0, 1], or null")
    branch: Optional[str] = checked(None, lambda v: v in (None, "o2m"), "null or o2m")  # o2m: DATE's o2m branch + NMS


@dataclass
class PredictConfig:
    """Schema of conf/predict.yaml (``python -m date.predict checkpoint=... images=...``)."""

    checkpoint: str = MISSING  # a model_final.pth or last.pth written by date.train (required)
    images: Any = MISSING  # a folder, an image file, or a list of folders and files (required)
    # the folder detections.json, images.json, predict.log and the drawn <stem>.png go into (new, empty, or an
    # earlier prediction's); null: outputs/predict/<date_time>
    out: Optional[str] = None
    overwrite: bool = False  # true: out= may be a folder holding other files (same-named ones are replaced)
    score_thresh: float = in_unit_interval(0.3)  # drawn images: boxes scoring at least this (detections.json: all)
    device: str = device_field()  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    amp: str = amp_field()  # bf16 autocast: auto (on with CUDA, off on CPU) | true | false
    batch_size: int = at_least(8, 1)  # images per forward pass (consecutive images of one size)


@dataclass
class ExportConfig:
    """Schema of conf/export.yaml (``python -m date.export checkpoint=...``)."""

    checkpoint: str = MISSING  # a model_final.pth or last.pth written by date.train (required)
    out: Optional[str] = None  # the .onnx file to write; null: the checkpoint's path with the suffix .onnx
    overwrite: bool = False  # true: out= may replace an existing file that is not an ONNX model


@dataclass
class CrowdEvalConfig:
    """Schema of conf/crowdhuman_eval.yaml (``python -m date.crowdhuman_eval gt=... dt=...``)."""

    gt: str = MISSING  # ground-truth .odgt (official format), each line with height and width unless images= (required)
    dt: str = MISSING  # detection .odgt: one line per image {"ID": ..., "dtboxes": [{"box": [x,y,w,h], "score": s}]}
    images: Optional[str] = None  # folder of <ID>.jpg: read the image sizes from the headers instead of the gt lines
    out: Optional[str] = None  # also write {"AP", "mMR", "JI", "recall"} (fractions) as JSON to this path


def register() -> None:
    """Put the schemas into Hydra's ConfigStore and the run-dir resolver into OmegaConf."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="crowdhuman_eval_schema", node=CrowdEvalConfig)
    if not OmegaConf.has_resolver("date.run_name"):
        OmegaConf.register_new_resolver("date.run_name", run_name)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The training config exactly as ``python -m date.train <overrides>`` composes it (scripts, tests)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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


def _problems(node: DictConfig, prefix: str = "", *, missing_ok: bool = False) -> list[str]:
    """The failed checks of a structured node and its structured children (see :func:`checked`); ``missing_ok``:
    leave unset (``???``) keys to the entrypoint, which says what it needs."""
    schema = OmegaConf.get_type(node)
    found: list[str] = []
    for f in fields(schema):
        if OmegaConf.is_missing(node, f.name):
            if not missing_ok:
                found.append(f"{prefix}{f.name}: not set (pass {prefix}{f.name}=... or pick a group option)")
            continue
        value = node[f.name]
        if isinstance(value, DictConfig) and is_dataclass(OmegaConf.get_type(value)):
            found += _problems(value, f"{prefix}{f.name}.", missing_ok=missing_ok)
        elif "ok" in f.metadata and not f.metadata["ok"](value):
            plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            found.append(f"{prefix}{f.name}={plain!r}: expected {f.metadata['expected']}")
    if hasattr(schema, "cross_checks"):
        found += schema.cross_checks(node)
    return found


def validate(cfg: DictConfig) -> None:
    """Check the ranges of a composed training config; raise ConfigError listing every problem."""
    problems = _problems(cfg)
    try:
        OmegaConf.to_object(cfg.branch_weighting)  # BranchWeighting checks its own fields
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError("Invalid configuration: " + "; ".join(problems) + ". Fix these values on the command line "
                          "(key=value) or in conf/; `python -m date.train --cfg job` prints the composed config.")


def check_ranges(cfg: DictConfig) -> None:
    """The range checks of a composed date.evaluate / date.predict / date.export config; ConfigError listing every
    problem (required keys are their run's to check)."""
    problems = _problems(cfg, missing_ok=True)
    if problems:
        raise ConfigError("Invalid configuration: " + "; ".join(problems) + ". Fix these values on the command line "
                          "(key=value).")


def resolved_config(cfg: DictConfig) -> dict:
    """The composed config as plain data (enums as their names): what checkpoints and MLflow params hold."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def resume_mismatches(saved: dict, current: dict) -> list[str]:
    """Config keys whose values differ between a checkpoint's config and this run's (ignoring
    resume_safe_keys()), as "key: saved -> current" strings."""
    old, new, safe = flatten(saved), flatten(current), resume_safe_keys()
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in safe]


def flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    """{"backbone": {"depth": 18}} -> {"backbone.depth": 18}; lists stay values."""
    if isinstance(container, dict):
        out: dict[str, Any] = {}
        for key, value in container.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: container}


register()
