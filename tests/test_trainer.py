"""The trainer in-process: lr schedule, optimiser groups, checkpoints, repeatability, resume, NaN stop, the typed
state against last.pth's keys."""
import json
import random

import numpy as np
import pytest
import torch

from conftest import two_images
from date.config import compose_config
from date.training import non_finite, optim
from date.training.state import TrainState
from date.training.trainer import RunContext, Trainer
from date.data.build import build_datasets
from date.modeling.build import build_criterion, build_detector
from date.runtime import checkpoint as ckpt

# 2 epochs x 4 iterations of batch 2 on the CPU, lr x0.1 after the first
RUN = ["dataset.num_train=8", "dataset.num_val=4", "batch_size=2", "num_workers=0", "schedule.epochs=2",
       "schedule.lr_steps=[1]", "schedule.warmup_iters=2", "schedule.warmup_ratio=0.1", "log_every=1",
       "eval_every=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, train set of 8 images, val set of 4) from the real synthetic preset."""
    cfg = compose_config([*RUN, f"dataset.cache_dir={tmp_path_factory.mktemp('engine_data')}"])
    train_set, val_set = build_datasets(cfg.dataset)
    return cfg, train_set, val_set


@pytest.fixture(scope="module")
def plain_run(setup, tmp_path_factory):
    """(metrics, run dir) of one run of the setup's config as it is, with one intra-op thread (as one_thread):
    the repeat, the o2m-diagnostic and the eval-subset tests each compare with it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("plain_run")
    try:
        return _train(setup, run_dir), run_dir
    finally:
        torch.set_num_threads(before)


def _model(cfg, num_classes, seed=0):
    torch.manual_seed(seed)
    return build_detector(cfg, num_classes=num_classes)


def _train(setup, run_dir, *, model=None, criterion=None, resume_from=None, **keys):
    """Train with the setup's config, top-level ``keys`` (checkpoint_every_iters=3, ...) changed."""
    cfg, train_set, val_set = setup
    cfg = cfg.copy()
    for key, value in keys.items():
        cfg[key] = value
    t = Trainer(cfg, model=model or _model(cfg, train_set.num_classes), criterion=criterion or build_criterion(cfg),
                datasets=(train_set, val_set), run=RunContext(run_dir, torch.device("cpu")))
    if resume_from is not None:
        t.resume(resume_from)
    return t.fit()


def test_lr_factor_warmup_then_steps():
    f = lambda it: optim.lr_factor(it, warmup_iters=10, warmup_ratio=0.001, milestones=[20, 30])  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(10) == f(19) == 1.0
    assert f(20) == pytest.approx(0.1) and f(29) == pytest.approx(0.1)
    assert f(30) == pytest.approx(0.01)


def test_optimizer_groups(setup):
    cfg, train_set, _ = setup
    model = _model(cfg, train_set.num_classes)
    opt = optim.build_optimizer(model, lr=1.0, weight_decay=0.5, backbone_lr_mult=0.1)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        group = by_id[id(p)]
        assert group["lr"] == (0.1 if name.startswith("backbone.body.") else 1.0), name
        assert group["weight_decay"] == (0.0 if p.ndim <= 1 else 0.5), name
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_checkpoint_is_atomic_and_loads_weights_only(tmp_path):
    path = tmp_path / "last.pth"
    ckpt.save_atomic({"x": torch.arange(3), "rng": ckpt.rng_state(), "name": "a", "n": [1, 2.5, None]}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary left behind
    assert ckpt.load(path)["x"].tolist() == [0, 1, 2]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="last.pth"):
        ckpt.load(path)


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    ckpt.save_atomic({"rng": ckpt.rng_state()}, tmp_path / "rng.pth")
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(ckpt.load(tmp_path / "rng.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


@pytest.mark.slow
def test_same_seed_same_run_and_resume_matches(setup, plain_run, tmp_path, monkeypatch, one_thread):
    """Two identical runs agree exactly; a run stopped after a mid-epoch checkpoint and resumed agrees too."""
    first = _train(setup, tmp_path / "a", checkpoint_every_iters=3)
    assert set(first) >= {"val/AP", "val/AP50", "val/APl", "val/ARl", "train/loss"}
    assert plain_run[0] == first  # the same config without the periodic checkpoints

    criterion, calls = build_criterion(setup[0]), []

    def dies_at_iteration_8(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt  # stands in for a kill: nothing after it runs
        return criterion(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        _train(setup, tmp_path / "c", checkpoint_every_iters=3, criterion=dies_at_iteration_8)
    saved = ckpt.load(tmp_path / "c" / ckpt.LAST)
    assert (saved["global_iter"], saved["epoch"], saved["iter_in_epoch"]) == (6, 1, 2)  # mid-epoch
    torch.manual_seed(123)  # the resumed process starts from other RNG states; the checkpoint restores them
    assert _train(setup, tmp_path / "c", checkpoint_every_iters=3, resume_from=saved,
                  model=_model(setup[0], setup[1].num_classes, seed=5)) == first


def test_nan_loss_stops_naming_iteration_and_term_without_checkpoint(setup, tmp_path, monkeypatch, one_thread):
    criterion = build_criterion(setup[0])
    real_o2m_losses, calls = criterion.o2m_losses, []

    def o2m_losses(*args):  # the third step's o2m/iou term is NaN
        calls.append(1)
        terms = real_o2m_losses(*args)
        if len(calls) == 3:
            terms["o2m/iou"] = terms["o2m/iou"] * float("nan")
        return terms

    monkeypatch.setattr(criterion, "o2m_losses", o2m_losses)
    with pytest.raises(non_finite.NonFiniteLossError) as info:
        _train(setup, tmp_path, criterion=criterion, checkpoint_every_iters=2)
    message = str(info.value)
    assert "iteration 3 " in message and "o2m/iou is nan" in message and "last.pth" in message
    saved = ckpt.load(tmp_path / ckpt.LAST)
    assert saved["global_iter"] == 2 and not saved["finished"]  # the last good checkpoint, untouched
    assert not (tmp_path / ckpt.FINAL).exists()


@pytest.mark.slow
def test_dual_evaluates_its_o2m_branch_as_a_diagnostic(setup, plain_run, tmp_path, one_thread):
    alone, _ = plain_run  # eval_o2m_branch=false, the default
    assert not any(k.startswith("val/o2m/") for k in alone)
    both = _train(setup, tmp_path / "both", eval_o2m_branch=True)
    assert {"val/o2m/AP", "val/o2m/AP50", "val/o2m/APl"} <= set(both)
    history = json.loads((tmp_path / "both" / "eval_results.json").read_text())
    assert [sorted(k for k in h if k.startswith("val/o2m/")) for h in history] == \
        [sorted(k for k in both if k.startswith("val/o2m/"))] * 2  # both epochs
    assert alone["val/AP"] == both["val/AP"] and alone["train/loss"] == both["train/loss"]  # a diagnostic only


def test_level_diagnostics_count_every_image_and_every_object_once_per_epoch(setup, plain_run):
    """level_diagnostics.json: per epoch the 8 training images; POTO matches each object of them exactly once
    (the objects counted from the annotation file); the FCOS branch has positives, on P3-P7 counts of 5."""
    _, run_dir = plain_run
    history = json.loads((run_dir / "level_diagnostics.json").read_text())
    train_set = setup[1]
    objects = sum(1 for a in train_set.coco.dataset["annotations"] if not a.get("iscrowd", 0))
    assert [h["epoch"] for h in history] == [1, 2] and [h["images"] for h in history] == [8, 8]
    for h in history:
        assert len(h["o2o"]) == len(h["o2m"]) == 5
        assert sum(h["o2o"]) == objects
        assert sum(h["o2m"]) > 0


@pytest.mark.slow
def test_eval_subset_scores_the_first_images_before_the_last_evaluation(setup, plain_run, tmp_path, one_thread):
    """eval_subset=2 of 4 val images: epoch 1 is scored on images 1-2, the last evaluation on all 4; training and
    the final metrics are those of a run that evaluates everything."""
    part = _train(setup, tmp_path / "part", eval_subset=2)
    full, full_dir = plain_run  # the config's eval_subset (100) covers the 4 val images: every evaluation is full
    assert setup[0].eval_subset >= len(setup[2])
    part_history = json.loads((tmp_path / "part" / "eval_results.json").read_text())
    full_history = json.loads((full_dir / "eval_results.json").read_text())
    assert [h["images"] for h in part_history] == [2, 4] and [h["images"] for h in full_history] == [4, 4]
    assert part == full
    assert part_history[-1] == full_history[-1]


@pytest.mark.parametrize("amp,device,bf16,expected", [
    ("auto", "cpu", None, None),  # CPU autocast is slow and changes CPU numbers: off unless asked for
    ("true", "cpu", None, torch.bfloat16),
    ("false", "cuda", True, None),
    ("auto", "cuda", True, torch.bfloat16),  # Ampere and later
    ("auto", "cuda", False, torch.float16),  # V100 / T4: bf16 only emulated; fp16 with a gradient scaler
    ("true", "cuda", False, torch.float16),
])
def test_autocast_dtype_falls_back_to_fp16_without_native_bf16(amp, device, bf16, expected):
    from date.runtime.distributed import autocast_dtype

    assert autocast_dtype(amp, torch.device(device), bf16_supported=bf16) == expected



def test_channels_last_trains_to_the_same_losses_on_a_fixed_batch(setup, tmp_path, one_thread):
    """channels_last (NHWC) changes the memory layout of the weights and images only: three steps on one fixed
    batch give the same losses to 1e-5."""
    cfg, train_set, val_set = setup
    images, targets = two_images()
    start = _model(cfg, train_set.num_classes).state_dict()
    losses = {}
    for channels_last in (False, True):
        run_cfg = cfg.copy()
        run_cfg.channels_last = channels_last
        model = _model(run_cfg, train_set.num_classes)
        model.load_state_dict(start)
        t = Trainer(run_cfg, model=model, criterion=build_criterion(run_cfg), datasets=(train_set, val_set),
                    run=RunContext(tmp_path / str(channels_last), torch.device("cpu")))
        conv = model.backbone.body.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        losses[channels_last] = [t.step(images, targets)[1] for _ in range(3)]
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-5, atol=1e-5)
    assert losses[False][0] != losses[False][2]  # the steps trained


def test_state_is_written_under_last_pths_keys_and_reads_older_checkpoints():
    state = TrainState(epoch=1, iter_in_epoch=2, global_iter=6, metrics={"train/loss": 1.5}, loss_history=[[4, 1.5]])
    state.window.count, state.window.sums = 2, {"total": 3.0}
    saved = state.as_checkpoint()
    assert list(saved) == ["epoch", "iter_in_epoch", "global_iter", "eval_history", "metrics", "loss_history",
                           "window", "elapsed_s", "level_counts", "level_history"]  # last.pth's keys, new ones last
    assert saved["window"] == {"count": 2, "images": 0, "sums": {"total": 3.0}}
    assert TrainState.from_checkpoint({**saved, "model": {}, "finished": False}) == state
    older = {k: v for k, v in saved.items() if k != "loss_history"}  # written before the loss history was kept
    assert TrainState.from_checkpoint(older).loss_history == [] and TrainState.from_checkpoint(older).global_iter == 6
    before_levels = {k: v for k, v in saved.items() if not k.startswith("level_")}  # before the level diagnostics
    assert TrainState.from_checkpoint(before_levels).level_history == []
