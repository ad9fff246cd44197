"""The criterion: every term weighted by its branch weight x term weight, branch weights following the
schedule, and only the trained branches' assigners and terms."""
import pytest
import torch

from conftest import two_images
from date.config import compose_config
from date.criterion import positives_per_level
from date.modeling.build import build_criterion, build_detector

@pytest.mark.parametrize("progress", [0.0, 0.5, 0.9])
def test_total_is_the_sum_of_branch_weight_times_term_weight_times_term(progress):
    cfg = compose_config(["assigner=dual", "branch_weighting=o2m_decay", "backbone.fpn_channels=64",
                          "model.num_convs=1", "model.loss_weights={o2o/l1:3.0}"])
    torch.manual_seed(0)
    model, criterion = build_detector(cfg, num_classes=3), build_criterion(cfg)
    images, targets = two_images()
    losses = criterion(*model(images), targets, progress)
    w_o2m = 1.0 - progress  # o2m_decay: linear from 1 to 0 over training
    table = {"o2o/cls": 2.0, "o2o/l1": 3.0, "o2o/giou": 2.0, "o2m/cls": 1.0, "o2m/iou": 1.0, "o2m/ctr": 1.0}
    assert list(losses.terms) == list(table)  # o2o first, then o2m
    assert losses.branch_weights == pytest.approx({"o2m": w_o2m, "o2o": 1.0})
    expected = {k: (w_o2m if k.startswith("o2m/") else 1.0) * w for k, w in table.items()}
    assert losses.weights == pytest.approx(expected)
    by_hand = sum(expected[k] * v.item() for k, v in losses.terms.items())
    assert losses.total.item() == pytest.approx(by_hand, rel=1e-6)
    losses.total.backward()  # one graph reaches the network
    assert model.head.cls_tower[0].weight.grad is not None


def test_a_baseline_has_only_its_own_branch():
    for option, terms in (("o2o", {"o2o/cls", "o2o/l1", "o2o/giou"}), ("o2m", {"o2m/cls", "o2m/iou", "o2m/ctr"})):
        cfg = compose_config([f"assigner={option}", "backbone.fpn_channels=64", "model.num_convs=1"])
        model, criterion = build_detector(cfg, num_classes=3), build_criterion(cfg)
        losses = criterion(*model(two_images()[0]), two_images()[1], 0.3)
        assert set(losses.terms) == set(losses.weights) == terms


def test_positives_per_level_against_a_brute_force_count():
    sizes = [64, 16, 4, 1, 1]
    pos_loc = torch.tensor([0, 63, 64, 79, 80, 83, 84, 85, 85, 3])
    expected = [0] * len(sizes)
    for index in pos_loc.tolist():
        start = 0
        for level, size in enumerate(sizes):
            if start <= index < start + size:
                expected[level] += 1
            start += size
    assert positives_per_level(pos_loc, sizes).tolist() == expected == [3, 2, 2, 1, 2]
    assert positives_per_level(torch.zeros(0, dtype=torch.long), sizes).tolist() == [0] * 5


def test_losses_report_each_branchs_positives_per_level():
    images, targets = two_images()
    cfg = compose_config(["assigner=dual", "backbone.fpn_channels=64", "model.num_convs=1"])
    torch.manual_seed(0)
    model, criterion = build_detector(cfg, num_classes=3), build_criterion(cfg)
    losses = criterion(*model(images), targets, 0.0)
    assert set(losses.positives_per_level) == {"o2o", "o2m"}
    objects = sum(len(t["labels"]) for t in targets)
    assert int(losses.positives_per_level["o2o"].sum()) == objects  # one match per object
    assert int(losses.positives_per_level["o2m"].sum()) >= objects
