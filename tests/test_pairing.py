"""Paired seeds: one `seed` gives every assigner mode the same start and the same data, so that the
difference between two modes over seeds is a paired comparison (analysis.convergence's paired t-test)."""
import itertools

import pytest
import torch

from date.config import compose_config
from date.data.build import build_datasets
from date.data.loader import build_train_loader
from date.modeling.build import build_detector
from date.runtime.checkpoint import seed_everything

MODES = ("o2m", "o2o", "dual", "dual_topk")
SMALL = ["dataset.num_train=8", "dataset.num_val=4", "batch_size=2", "num_workers=0"]


def _start(mode: str, seed: int, cache: str, extra=()):
    """What date.train builds for a mode before its first step: the seeded detector, the first two batches of
    epoch 0 (and of epoch 1), and the next number of the global RNG."""
    cfg = compose_config([f"assigner={mode}", f"seed={seed}", f"dataset.cache_dir={cache}", *SMALL, *extra])
    train_set, _ = build_datasets(cfg.dataset, augmentation=cfg.schedule.augmentation)
    seed_everything(cfg.seed)  # as date/train.py, rank 0
    model = build_detector(cfg, num_classes=train_set.num_classes)
    batches = [list(itertools.islice(build_train_loader(train_set, batch_size=cfg.batch_size, seed=cfg.seed,
                                                        num_workers=cfg.num_workers, epoch=epoch), 2))
               for epoch in (0, 1)]
    return model.state_dict(), batches, torch.rand(4)


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("pairing_data"))
    return {(mode, seed): _start(mode, seed, cache) for mode in MODES for seed in (0, 1)}


def _assert_batches_equal(a, b):
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b, strict=True):
        assert torch.equal(images_a, images_b)
        for ta, tb in zip(targets_a, targets_b, strict=True):
            assert ta.keys() == tb.keys()
            for key in ta:
                assert torch.equal(torch.as_tensor(ta[key]), torch.as_tensor(tb[key])), key


@pytest.mark.parametrize("seed", [0, 1])
def test_one_seed_gives_every_mode_the_same_start_for_what_they_share(starts, seed):
    weights = {mode: starts[mode, seed][0] for mode in MODES}
    # what each pair of modes must share, by parameter-name prefix
    shared = {"backbone.": MODES, "head.cls_tower.": MODES, "head.reg_tower.": MODES, "head.scales.": MODES,
              "head.predictors.o2o.": ("o2o", "dual", "dual_topk"),
              "head.predictors.o2m.": ("o2m", "dual", "dual_topk")}
    for prefix, modes in shared.items():
        names = [k for k in weights[modes[0]] if k.startswith(prefix)]
        assert names, prefix
        for mode in modes[1:]:
            assert sorted(k for k in weights[mode] if k.startswith(prefix)) == sorted(names)
            for name in names:
                assert torch.equal(weights[mode][name], weights[modes[0]][name]), f"{mode} vs {modes[0]}: {name}"
    assert "head.predictors.o2m.cls.weight" not in weights["o2o"]
    assert "head.predictors.o2o.cls.weight" not in weights["o2m"]


@pytest.mark.parametrize("seed", [0, 1])
def test_one_seed_gives_every_mode_the_same_batches_and_global_rng(starts, seed):
    reference = starts["o2o", seed]
    for mode in MODES:
        _assert_batches_equal(starts[mode, seed][1][0], reference[1][0])
        _assert_batches_equal(starts[mode, seed][1][1], reference[1][1])
        assert torch.equal(starts[mode, seed][2], reference[2]), mode  # the head leaves the global RNG as it found it


def test_seeds_differ(starts):
    """The pairing is not a constant: another seed gives other weights and other batches."""
    w0, w1 = starts["dual", 0][0], starts["dual", 1][0]
    for name in ("head.cls_tower.0.weight", "head.predictors.o2o.box.weight", "head.predictors.o2m.ctr.weight",
                 "backbone.fpn.layer_blocks.0.0.weight"):
        assert not torch.equal(w0[name], w1[name]), name
    assert not torch.equal(starts["dual", 0][1][0][0][0], starts["dual", 1][1][0][0][0])
    # and within one model, layers of the same shape do not start as copies of each other
    assert not torch.equal(w0["head.cls_tower.0.weight"], w0["head.reg_tower.0.weight"])
    assert not torch.equal(w0["head.predictors.o2o.box.weight"], w0["head.predictors.o2m.box.weight"])


def test_head_init_keeps_the_papers_distribution(starts):
    """Normal(0, 0.01) conv weights, zero biases, the classifiers' bias at the 0.01 prior."""
    w = starts["dual", 0][0]
    tower = w["head.cls_tower.0.weight"]
    assert abs(float(tower.mean())) < 1e-3 and float(tower.std()) == pytest.approx(0.01, rel=0.02)
    assert torch.count_nonzero(w["head.cls_tower.0.bias"]) == 0
    assert torch.allclose(w["head.predictors.o2o.cls.bias"], torch.full_like(w["head.predictors.o2o.cls.bias"], -4.59512),
                          atol=1e-4)
