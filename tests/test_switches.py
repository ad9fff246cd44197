"""The switches of the fair-test study, each proven to change what it says: unshared towers, o2m box
coding and box loss, FCOS centre sampling with the paper's level ranges, and the o2m detach."""
import math

import pytest
import torch

from conftest import two_images
from date.config import compose_config
from date.modeling.build import build_criterion, build_detector
from date.training.optim import build_optimizer

NARROW = ["backbone.fpn_channels=64", "model.num_convs=1"]


def _build(overrides, seed=0):
    cfg = compose_config([*NARROW, *overrides])
    torch.manual_seed(seed)
    return build_detector(cfg, num_classes=3), build_criterion(cfg)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _params(model, prefix):
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


@pytest.mark.parametrize("towers,scales", [(False, True), (True, False), (False, False)])
def test_sharing_switches_separate_exactly_what_they_name(towers, scales):
    """share_towers=false: the o2m branch gets its own towers and keeps the shared Scales (the official
    share_stacked_convs=False); share_scales=false: its own Scales, on the shared towers unless unshared too."""
    shared, _ = _build(["assigner=dual"])
    assert shared.head.o2m_towers is None and shared.head.o2m_scales is None
    model, criterion = _build(["assigner=dual", f"model.share_towers={towers}", f"model.share_scales={scales}"])
    head = model.head
    assert (head.o2m_towers is None) == towers and (head.o2m_scales is None) == scales
    # the o2m-only parameters are exactly those the switches name
    own = _params(model, "head.o2m_towers.") | _params(model, "head.o2m_scales.")
    expected = set() if towers else {f"head.o2m_towers.{n}" for n, _ in head.cls_tower.named_parameters(prefix="cls_tower")}
    expected |= set() if towers else {f"head.o2m_towers.{n}" for n, _ in head.reg_tower.named_parameters(prefix="reg_tower")}
    expected |= set() if scales else {f"head.o2m_scales.{i}.scale" for i in range(len(head.scales))}
    assert own == expected

    losses = criterion(*model(*two_images()[:1]), two_images()[1], 0.0).terms
    from_o2o = _grads(model, sum(v for k, v in losses.items() if k.startswith("o2o/")))
    from_o2m = _grads(model, sum(v for k, v in losses.items() if k.startswith("o2m/")))
    assert not any(n.startswith(("head.o2m_towers.", "head.o2m_scales.")) for n in from_o2o)
    tower_names = ("head.cls_tower.", "head.reg_tower.")
    assert any(n.startswith(tower_names) for n in from_o2o)
    assert any(n.startswith(tower_names) for n in from_o2m) == towers  # shared towers get both branches' gradient
    assert any(n.startswith("head.scales.") for n in from_o2m) == scales
    assert any(n.startswith("head.o2m_towers.cls_tower.") for n in from_o2m) != towers
    assert any(n.startswith("head.o2m_scales.") for n in from_o2m) != scales
    assert "backbone.body.conv1.weight" in from_o2o & from_o2m  # the backbone and FPN stay shared


@pytest.mark.parametrize("mode", ["o2m", "o2o"])
def test_sharing_switches_leave_a_one_branch_detector_as_it_is(mode):
    base, _ = _build([f"assigner={mode}"])
    model, _ = _build([f"assigner={mode}", "model.share_towers=false", "model.share_scales=false"])
    assert model.head.o2m_towers is None and model.head.o2m_scales is None
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in base.named_parameters()]


@pytest.mark.parametrize("coding", ["exp", "linear"])
def test_o2m_box_coding(coding):
    model, _ = _build(["assigner=o2m", f"model.o2m_box_coding={coding}"])
    box = model.head.predictors["o2m"]["box"]
    with torch.no_grad():
        box.weight.zero_()
        box.bias.fill_(2.0)  # raw output 2 everywhere, Scales at 1
    outputs, loc = model(two_images()[0])
    ltrb = outputs["o2m"]["ltrb"][0, :, 0]  # [N]
    expected = loc.strides * 2.0 if coding == "linear" else torch.full_like(loc.strides, math.exp(2.0))
    assert torch.allclose(ltrb, expected)


def test_o2m_giou_box_loss_replaces_the_centerness_weighted_log_iou():
    images, targets = two_images()
    terms = {}
    for kind in ("log_iou", "giou"):
        model, criterion = _build(["assigner=o2m", f"model.o2m_box_loss={kind}"])
        assert criterion.o2m_box_loss == kind
        terms[kind] = criterion(*model(images), targets, 0.0).terms
    assert terms["giou"]["o2m/cls"].item() == terms["log_iou"]["o2m/cls"].item()
    assert terms["giou"]["o2m/ctr"].item() == terms["log_iou"]["o2m/ctr"].item()
    assert terms["giou"]["o2m/iou"].item() != pytest.approx(terms["log_iou"]["o2m/iou"].item(), rel=1e-3)
    assert 0.0 < terms["giou"]["o2m/iou"].item() <= 2.0  # mean of 1 - GIoU over the positives


def _positives(overrides):
    model, criterion = _build(["assigner=o2m", *overrides])
    images, targets = two_images()
    outputs, loc = model(images)
    from date.criterion import pad_targets

    logits = outputs["o2m"]["cls"].detach()
    matched = criterion.assigners["o2m"](logits, None, loc, pad_targets(targets, images.device))
    return int((matched >= 0).sum())


def test_fcos_centre_sampling_changes_the_positives_with_the_papers_ranges():  # (the default ranges)
    whole_box, sampled = _positives([]), _positives(["assigner.fcos_center_sampling=1.5"])
    assert 0 < sampled < whole_box


def test_o2m_detach_leaves_the_o2o_training_of_dual_exactly_that_of_o2o():
    """With the detach, DATE's shared layers and o2o predictors train exactly as POTO's: the only coupling
    between the branches is the shared layers' gradients. (Gradient clipping couples them through the
    global norm, so it is off here.)"""
    images, targets = two_images()

    start = _build(["assigner=o2o"])[0].state_dict()

    def train(overrides):
        model, criterion = _build([*overrides, "optim.clip_grad_norm=null"])
        # the same starting weights (the o2m predictors' construction draws from the RNG before the init)
        assert not model.load_state_dict(start, strict=False).unexpected_keys
        optimizer = build_optimizer(model, lr=1e-3, weight_decay=1e-4, backbone_lr_mult=1.0)
        for step in range(3):
            loss = criterion(*model(images), targets, step / 3).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return model.state_dict()

    poto = train(["assigner=o2o"])
    detached = train(["assigner=dual", "model.o2m_detach=true"])
    coupled = train(["assigner=dual"])
    common = [k for k in poto if not k.endswith("num_batches_tracked")]
    assert set(common) < set(detached)  # dual has the o2m predictors on top
    for key in common:
        assert torch.equal(poto[key], detached[key]), key  # bit-identical
    assert not torch.allclose(poto["head.cls_tower.0.weight"], coupled["head.cls_tower.0.weight"], atol=1e-6, rtol=0)
