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


def test_unshared_towers_give_the_o2m_branch_its_own_towers_and_scales():
    shared, _ = _build(["assigner=dual"])
    assert shared.head.o2m_towers is None
    model, criterion = _build(["assigner=dual", "model.share_towers=false"])
    losses = criterion(*model(*two_images()[:1]), two_images()[1], 0.0).terms
    from_o2o = _grads(model, sum(v for k, v in losses.items() if k.startswith("o2o/")))
    from_o2m = _grads(model, sum(v for k, v in losses.items() if k.startswith("o2m/")))
    assert any(n.startswith("head.cls_tower.") for n in from_o2o)
    assert not any(n.startswith("head.o2m_towers.") for n in from_o2o)
    assert any(n.startswith("head.o2m_towers.cls_tower.") for n in from_o2m)
    assert any(n.startswith("head.o2m_towers.scales.") for n in from_o2m)
    assert not any(n.startswith(("head.cls_tower.", "head.reg_tower.", "head.scales.")) for n in from_o2m)
    assert "backbone.body.conv1.weight" in from_o2o & from_o2m  # the backbone and FPN stay shared


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
