"""The Hydra configuration: every group option composes, validates and builds; bad values are refused."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.conf import HydraConf
from hydra.errors import ConfigCompositionException
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

from date.assign import POTO, FCOSAssigner, TopKAssigner
from date.branch_weighting import BranchWeighting
from date.config import (AssignerConfig, BackboneConfig, ConfigError,
                         CrowdEvalConfig, EvaluateConfig, ExportConfig, PredictConfig, ScheduleConfig, TrainConfig,
                         compose_config, flatten, resolved_config, resume_mismatches, resume_safe_keys,
                         run_dir_excluded_keys, run_name, validate)
from date.data.build import DatasetConfig
from date.modeling.build import build_criterion, build_detector

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("backbone", "assigner", "schedule", "branch_weighting", "dataset")


_compose = compose_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_the_documented_options():
    assert _options("backbone") == ["resnet101", "resnet18", "resnet34", "resnet50"]
    assert _options("assigner") == ["dual", "dual_topk", "o2m", "o2o"]
    assert _options("schedule") == ["1x", "3x", "smoke"]
    assert _options("branch_weighting") == ["equal", "o2m_cutoff", "o2m_decay", "o2o_warmup"]
    assert {"synthetic", "synthetic_large", "coco", "coco_json"} <= set(_options("dataset"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = _compose([f"{group}={option}"])
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    OmegaConf.to_object(cfg.branch_weighting)(0.5)


def test_defaults_and_choices():
    cfg = _compose()
    assert (cfg.backbone.depth, cfg.assigner.mode, cfg.schedule.epochs) == (18, "dual", 12)
    assert cfg.dataset.kind == "synthetic"
    assert cfg.model.size_of_interest == [64, 128, 256, 512]  # the paper's FCOS ranges, whatever the dataset
    assert "size_of_interest" not in cfg.dataset
    assert _compose(["assigner=dual_topk"]).assigner.o2m == "topk"
    assert _compose(["schedule=3x"]).schedule.lr_steps == [24, 33]


@pytest.mark.parametrize("option, trained, inference, o2m_rule", [
    ("o2m", ("o2m",), "o2m", FCOSAssigner), ("o2o", ("o2o",), "o2o", None),
    ("dual", ("o2o", "o2m"), "o2o", FCOSAssigner), ("dual_topk", ("o2o", "o2m"), "o2o", TopKAssigner)])
def test_every_assigner_option_builds_its_branches_and_assigners(option, trained, inference, o2m_rule):
    cfg = _compose([f"assigner={option}", "assigner.poto_alpha=0.7", "assigner.topk=7",
                    "assigner.fcos_center_sampling=1.5"])
    model, criterion = build_detector(cfg, num_classes=3), build_criterion(cfg)
    assert model.head.branches == trained and criterion.branches == trained
    assert model.inference_branch == inference
    if "o2o" in trained:  # the config's values reach the objects
        assert isinstance(criterion.assigners["o2o"], POTO) and criterion.assigners["o2o"].alpha == 0.7
    if o2m_rule is None:
        assert "o2m" not in criterion.assigners
    else:
        o2m = criterion.assigners["o2m"]
        assert type(o2m) is o2m_rule
        assert o2m.k == 7 if o2m_rule is TopKAssigner else o2m.center_sampling_radius == 1.5
        assert o2m_rule is TopKAssigner or o2m.level_ranges[1] == (64.0, 128.0)  # model.size_of_interest
    assert criterion.term_weights == dict(cfg.model.loss_weights)
    assert criterion.branch_weighting == OmegaConf.to_object(cfg.branch_weighting)


@pytest.mark.parametrize("option", _options("backbone"))
def test_every_backbone_builds(option):
    cfg = _compose([f"backbone={option}", "assigner=o2o"])
    model = build_detector(cfg, num_classes=3)
    assert model.head.cls_tower[0].in_channels == cfg.backbone.fpn_channels


SCHEMAS = {"backbone": BackboneConfig, "assigner": AssignerConfig, "schedule": ScheduleConfig,
           "branch_weighting": BranchWeighting, "dataset": DatasetConfig}
# The schema of each file whose keys sit at the root (experiments: `# @package _global_`); ``hydra.launcher`` there is
# the SLURM launcher's (the COCO recipes').
ROOT_SCHEMAS = {"config.yaml": TrainConfig, "evaluate.yaml": EvaluateConfig, "predict.yaml": PredictConfig,
                "export.yaml": ExportConfig, "crowdhuman_eval.yaml": CrowdEvalConfig, "experiment": TrainConfig}
LAUNCHERS = {"slurm.yaml": SlurmQueueConf, "local.yaml": LocalQueueConf}  # conf/hydra/launcher/: the plugin's schemas
# YAMLs without defaults to repeat: Hydra replaces the whole job_logging node with the option, merging nothing
SCHEMA_FREE = {"hydra/job_logging/console.yaml"}


def _defaults(schema: type) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)


def _baseline(path: Path) -> dict:
    """The values a file's keys would have without it: its schema's defaults, then the files of its own folder that
    its defaults list builds on (coco_json on coco, a _3dmf recipe on its recipe, a recipe on base/coco_8gpu)."""
    rel = path.relative_to(CONF)
    if rel.parts[0] in SCHEMAS:
        base = _defaults(SCHEMAS[rel.parts[0]])
    elif rel.parts[0] == "hydra":
        base = _defaults(LAUNCHERS[rel.name])
    else:
        base = {**_defaults(ROOT_SCHEMAS[rel.parts[0]]), "hydra": _defaults(HydraConf)}
        base["hydra"]["launcher"] = _defaults(SlurmQueueConf)
    written = OmegaConf.to_container(OmegaConf.load(path))
    for entry in written.get("defaults", []):
        if isinstance(entry, str) and (path.parent / f"{entry}.yaml").is_file():
            base = _overlay(_baseline(path.parent / f"{entry}.yaml"), _written(path.parent / f"{entry}.yaml"))
    return base


def _overlay(base: dict, written: dict) -> dict:
    """``base`` with ``written``'s values, nested dicts merged ("???" too: OmegaConf.merge would keep base's)."""
    out = dict(base)
    for key, value in written.items():
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _written(path: Path) -> dict:
    return {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path)).items() if k != "defaults"}


def _repeats(written: dict, baseline: dict, prefix: str = "") -> dict:
    found = {}
    for key, value in written.items():
        if isinstance(value, dict) and isinstance(baseline.get(key), dict):
            found.update(_repeats(value, baseline[key], f"{prefix}{key}."))
        elif key in baseline and baseline[key] == value:
            found[f"{prefix}{key}"] = value
    return found


ALL_YAMLS = sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml"))


@pytest.mark.parametrize("name", ALL_YAMLS)
def test_every_yaml_holds_only_what_differs_from_the_schema(name):
    """One home per default: a file under conf/ that repeats a schema default (or the value of the file it builds
    on) would be a second home."""
    if name in SCHEMA_FREE:
        return
    path = CONF / name
    repeated = _repeats(_written(path), _baseline(path))
    assert not repeated, f"conf/{name} repeats schema defaults {repeated}"


def test_the_no_repeat_check_sees_every_yaml_and_catches_a_repeat(tmp_path):
    assert {"config.yaml", "evaluate.yaml", "experiment/coco_r50_1x.yaml", "hydra/launcher/slurm.yaml",
            "dataset/coco_json.yaml"} <= set(ALL_YAMLS)
    assert _repeats({"device": "auto", "batch_size": 2, "hydra": {"launcher": {"nodes": 1, "tasks_per_node": 8}}},
                    _baseline(CONF / "experiment" / "coco_r50_1x.yaml")) == \
        {"device": "auto", "batch_size": 2, "hydra.launcher.nodes": 1, "hydra.launcher.tasks_per_node": 8}
    assert _repeats({"root": None, "max_size": 1333}, _baseline(CONF / "dataset" / "coco_json.yaml")) == \
        {"max_size": 1333}  # coco_json builds on coco: its root=null undoes coco's, its max_size would repeat it


@pytest.mark.parametrize("override", ["schedule.epoch=3", "optim.learning_rate=1", "batch_size=eight",
                                      "backbone.depth=deep", "assigner.mode=both", "assigner.o2m=atss",
                                      "branch_weighting.o2m_schedule=cosine", "schedule.augmentation=2x",
                                      "dataset.kind=lvis"])
def test_unknown_keys_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        _compose([override])


def test_unknown_group_option_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="assigner"):
        _compose(["assigner=nope"])


@pytest.mark.parametrize("override,key", [
    ("schedule.epochs=-1", "schedule.epochs"), ("schedule.lr_steps=[11,8]", "schedule.lr_steps"),
    ("optim.lr=0", "optim.lr"), ("backbone.depth=19", "backbone.depth"), ("assigner.poto_alpha=1.5", "poto_alpha"),
    ("branch_weighting.o2m_until=0", "o2m_until"), ("amp=maybe", "amp"), ("device=tpu", "device"),
    ("backbone.weights=/nonexistent/r18.pth", "backbone.weights"), ("+model.loss_weights.o2o_cls=1", "loss_weights"),
])
def test_out_of_range_values_are_refused_with_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(_compose([override]))


def test_3dmf_needs_the_one_to_one_branch():
    validate(_compose(["assigner=dual", "model.use_3dmf=true"]))
    with pytest.raises(ConfigError, match="use_3dmf"):
        validate(_compose(["assigner=o2m", "model.use_3dmf=true"]))


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate(_compose(["schedule.epochs=0", "batch_size=0"]))
    assert "schedule.epochs" in str(info.value) and "batch_size" in str(info.value)


def test_amp_accepts_booleans_from_the_command_line():
    validate(_compose(["amp=true"]))
    validate(_compose(["amp=false"]))


def test_run_name_is_deterministic_and_typeable():
    assert run_name("") == "defaults"
    assert run_name("assigner=o2o,seed=1") == "assigner-o2o_seed-1"
    assert run_name("dataset.root=/data/coco,schedule.lr_steps=[8,11]") == \
        "dataset.root-_data_coco_schedule.lr_steps-_8_11_"
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(run_name(long_a)) <= 160 and run_name(long_a) != run_name(long_b)


def test_resume_mismatches_ignore_keys_that_do_not_change_training():
    saved = {"schedule": {"epochs": 12}, "log_every": 20, "tracking": {"uri": None}}
    assert resume_mismatches(saved, {"schedule": {"epochs": 12}, "log_every": 1, "tracking": {"uri": "x"}}) == []
    assert resume_mismatches(saved, {"schedule": {"epochs": 24}, "log_every": 20, "tracking": {"uri": None}}) == \
        ["schedule.epochs: 12 -> 24"]


def test_run_dir_name_leaves_out_exactly_keys_that_may_change_on_resume():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert excluded <= set(resume_safe_keys())
    # one list: what Hydra leaves out of the run-dir name is what date.config read, plus how a run runs
    assert tuple(cfg.hydra.job.config.override_dirname.exclude_keys) == run_dir_excluded_keys()
    assert set(resume_safe_keys()) - excluded == {"device", "amp", "channels_last"}
    assert "log_every" in excluded and "tracking.uri" in excluded and "seed" not in excluded
    # a resume may change every one of them (flatten: the dotted keys resume_mismatches compares), and no other key
    saved = flatten(resolved_config(_compose()))
    assert resume_mismatches(saved, {**saved, **{key: "changed" for key in resume_safe_keys()}}) == []
    assert resume_mismatches(saved, {**saved, "seed": 1}) == ["seed: 0 -> 1"]
    assert not cfg.hydra.job.chdir


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


def test_checkpoints_written_before_the_fcos_ranges_moved_still_load():
    """Until 2026-12 the FCOS ranges were dataset.size_of_interest; such a checkpoint's config still loads."""
    import torch

    from date.config import resolved_config
    from date.modeling.build import checkpoint_config, detector_from_checkpoint
    from date.runtime.checkpoint import CheckpointError

    cfg = _compose(["backbone.fpn_channels=64", "model.num_convs=1"])
    model = build_detector(cfg, num_classes=3)
    old = resolved_config(cfg)
    old["dataset"]["size_of_interest"] = [16.0, 32.0, 64.0, 128.0]
    old["model"]["size_of_interest"] = [16.0, 32.0, 64.0, 128.0]
    saved = {"model": model.state_dict(), "config": old}
    assert checkpoint_config(saved).model.size_of_interest == [16.0, 32.0, 64.0, 128.0]  # its own ranges
    loaded = detector_from_checkpoint(saved, num_classes=3)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match="version"):
        checkpoint_config({"model": {}, "config": {**old, "model": {**old["model"], "head_width": 3}}})
