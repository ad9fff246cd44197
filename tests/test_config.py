"""The Hydra configuration: every group option composes, validates and builds; bad values are refused."""
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from date.branch_weighting import BranchWeighting
from date.config import (RESUME_SAFE_KEYS, BranchWeightingConfig, ConfigError, branch_weighting_kwargs, flatten, resume_mismatches,
                         run_name, validate)

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("backbone", "assigner", "schedule", "branch_weighting", "dataset")


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


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
    BranchWeighting(**branch_weighting_kwargs(cfg.branch_weighting))(0.5)


def test_defaults_and_choices():
    cfg = _compose()
    assert (cfg.backbone.depth, cfg.assigner.mode, cfg.schedule.epochs) == (18, "dual", 12)
    assert cfg.dataset.kind == "synthetic"
    assert cfg.model.size_of_interest == cfg.dataset.size_of_interest
    assert _compose(["assigner=dual_topk"]).assigner.o2m == "topk"
    assert _compose(["schedule=3x"]).schedule.lr_steps == [24, 33]


def test_every_assigner_and_backbone_builds_a_detector():
    from date.modeling.build import build_detector

    for option in _options("assigner"):
        cfg = _compose([f"assigner={option}"])
        build_detector(backbone=cfg.backbone, assigner=cfg.assigner, model=cfg.model, num_classes=3)
    for option in _options("backbone"):
        cfg = _compose([f"backbone={option}", "assigner=o2o"])
        build_detector(backbone=cfg.backbone, assigner=cfg.assigner, model=cfg.model, num_classes=3)


def test_branch_weighting_schema_mirrors_the_module():
    assert [(f.name, f.default) for f in fields(BranchWeightingConfig)] == \
        [(f.name, f.default) for f in fields(BranchWeighting)]


@pytest.mark.parametrize("override", ["schedule.epoch=3", "optim.learning_rate=1", "batch_size=eight",
                                      "backbone.depth=deep"])
def test_unknown_keys_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        _compose([override])


def test_unknown_group_option_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="assigner"):
        _compose(["assigner=nope"])


@pytest.mark.parametrize("override,key", [
    ("schedule.epochs=-1", "schedule.epochs"), ("schedule.lr_steps=[11,8]", "schedule.lr_steps"),
    ("optim.lr=0", "optim.lr"), ("assigner.mode=both", "assigner.mode"), ("backbone.depth=19", "backbone.depth"),
    ("branch_weighting.o2m_schedule=cosine", "o2m_schedule"), ("amp=maybe", "amp"), ("device=tpu", "device"),
    ("backbone.weights=/nonexistent/r18.pth", "backbone.weights"), ("+model.loss_weights.o2o_cls=1", "loss_weights"),
])
def test_out_of_range_values_are_refused_with_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(_compose([override]))


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
    assert excluded <= set(RESUME_SAFE_KEYS)
    assert not cfg.hydra.job.chdir


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}
