"""Loss terms against hand computations and torchvision's reference ops; branch weighting."""
import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from date.branch_weighting import BranchWeighting
from date.losses import centerness_targets, classification_loss, o2m_box_losses, o2o_box_losses


def test_classification_loss_is_focal_sum_over_positives_and_ignores_crowd():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=g)
    b, loc, labels = torch.tensor([0, 1]), torch.tensor([4, 0]), torch.tensor([2, 1])
    target = torch.zeros(2, 5, 3)
    target[0, 4, 2] = target[1, 0, 1] = 1
    expected = sigmoid_focal_loss(logits, target, reduction="sum") / 2
    assert torch.allclose(classification_loss(logits, (b, loc), labels, torch.tensor(2.0)), expected)
    ignore = torch.zeros(2, 5, dtype=torch.bool)
    ignore[1, 3] = True
    partial = sigmoid_focal_loss(logits, target, reduction="none")
    partial[1, 3] = 0
    assert torch.allclose(classification_loss(logits, (b, loc), labels, torch.tensor(2.0), ignore), partial.sum() / 2)


def test_o2o_box_losses_by_hand():
    pred = torch.tensor([[10.0, 10.0, 30.0, 50.0]])
    gt = torch.tensor([[12.0, 10.0, 32.0, 40.0]])
    wh = torch.tensor([[100.0, 200.0]])
    losses = o2o_box_losses(pred, gt, wh, torch.tensor(1.0))
    # cxcywh: pred (20, 30, 20, 40), gt (22, 25, 20, 30); normalised by (100, 200, 100, 200)
    assert losses["l1"].item() == pytest.approx(2 / 100 + 5 / 200 + 0 + 10 / 200)
    inter, union, hull = 18 * 30, 800 + 600 - 18 * 30, 22 * 40
    giou = inter / union - (hull - union) / hull
    assert losses["giou"].item() == pytest.approx(1 - giou, rel=1e-5)


def test_o2m_box_losses_by_hand():
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
    ctr = torch.tensor([1.0, 0.5])
    logits = torch.tensor([0.0, 2.0])
    losses = o2m_box_losses(pred, gt, logits, ctr, torch.tensor(2.0), ctr.sum(), box_loss="log_iou")
    assert losses["iou"].item() == pytest.approx((0.0 + 0.5 * -math.log(0.5)) / 1.5, rel=1e-5)
    bce = -(1.0 * math.log(0.5) + 0.0) - (0.5 * math.log(torch.sigmoid(torch.tensor(2.0)).item())
                                          + 0.5 * math.log(1 - torch.sigmoid(torch.tensor(2.0)).item()))
    assert losses["ctr"].item() == pytest.approx(bce / 2, rel=1e-5)
    # torchvision's FCOS recipe: 1 - GIoU per positive, not weighted by centerness, / positives
    giou = o2m_box_losses(pred, gt, logits, ctr, torch.tensor(2.0), ctr.sum(), box_loss="giou")
    assert giou["iou"].item() == pytest.approx((0.0 + (1 - 0.5)) / 2, rel=1e-5)  # nested boxes: GIoU = IoU
    assert giou["ctr"].item() == losses["ctr"].item()


def test_centerness_targets():
    ltrb = torch.tensor([[5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 4.0, 8.0]])
    assert torch.allclose(centerness_targets(ltrb), torch.tensor([1.0, math.sqrt(0.25 * 0.25)]))


@pytest.mark.parametrize("weighting, progress, expected", [
    (BranchWeighting(), 0.7, {"o2m": 1.0, "o2o": 1.0}),
    (BranchWeighting(o2m_schedule="linear_decay"), 0.25, {"o2m": 0.75, "o2o": 1.0}),
    (BranchWeighting(o2m_schedule="linear_decay", o2m_until=0.5), 0.75, {"o2m": 0.0, "o2o": 1.0}),
    (BranchWeighting(o2m_schedule="step", o2m_until=0.5), 0.49, {"o2m": 1.0, "o2o": 1.0}),
    (BranchWeighting(o2m_schedule="step", o2m_until=0.5), 0.5, {"o2m": 0.0, "o2o": 1.0}),
    (BranchWeighting(o2o_warmup=0.2), 0.05, {"o2m": 1.0, "o2o": 0.25}),
    (BranchWeighting(o2o_warmup=0.2, o2o=2.0), 0.5, {"o2m": 1.0, "o2o": 2.0}),
])
def test_branch_weighting(weighting, progress, expected):
    assert weighting(progress) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"o2m_schedule": "cosine"}, "o2m_schedule"),
    ({"o2m_until": 0.0}, "o2m_until"),
    ({"o2o_warmup": 1.0}, "o2o_warmup"),
    ({"o2m": -1.0}, ">= 0"),
])
def test_branch_weighting_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BranchWeighting(**kwargs)
