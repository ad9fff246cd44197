"""Detector behaviour: branches, gradients, empty images, inference without the o2m predictors,
backbone weights handling."""
import pytest
import torch
import torchvision

from date.config import compose_config
from date.modeling.backbone import BackboneWeightsError, build_resnet_fpn
from date.modeling.build import build_criterion, build_detector

SIZE = 128


def make(mode, *, use_3dmf=False, o2m="fcos", num_classes=3, seed=0, share_towers=True):
    """(detector, criterion) of assigner=<mode>, a narrow head (64 channels, 2 convs) for speed."""
    cfg = compose_config([f"assigner={mode}", f"assigner.o2m={o2m}", f"model.use_3dmf={use_3dmf}",
                          "backbone.fpn_channels=64", "model.num_convs=2", f"model.share_towers={share_towers}"])
    torch.manual_seed(seed)
    return build_detector(cfg, num_classes=num_classes), build_criterion(cfg)


def make_detector(mode, **kwargs):
    return make(mode, **kwargs)[0]


def train_losses(model, criterion, images, targets):
    """The unweighted loss terms of one training forward."""
    return criterion(*model(images), targets, 0.0).terms


def batch(with_empty=True):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, SIZE, SIZE, generator=g)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 40.0, 120.0, 100.0], [4.0, 90.0, 30.0, 124.0]]),
         "labels": torch.tensor([0, 2, 1]), "image_size": (SIZE, SIZE)},
        {"boxes": torch.tensor([[20.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1]), "image_size": (SIZE, 100),
         "crowd_boxes": torch.tensor([[0.0, 64.0, 100.0, 128.0]])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_size": (SIZE, SIZE)},
    ]
    if not with_empty:
        targets[2] = targets[0]
    return images, targets


EXPECTED_TERMS = {
    "o2o": {"o2o/cls", "o2o/l1", "o2o/giou"},
    "o2m": {"o2m/cls", "o2m/iou", "o2m/ctr"},
    "dual": {"o2o/cls", "o2o/l1", "o2o/giou", "o2m/cls", "o2m/iou", "o2m/ctr"},
}


@pytest.mark.parametrize("mode", ["o2o", "o2m", "dual"])
def test_losses_are_the_modes_terms_and_finite(mode):
    losses = train_losses(*make(mode), *batch())
    assert set(losses) == EXPECTED_TERMS[mode]
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name


@pytest.mark.parametrize("mode, use_3dmf", [("o2o", False), ("o2m", False), ("dual", False), ("o2o", True), ("dual", True)])
def test_losses_finite_when_no_image_has_objects(mode, use_3dmf):
    model, criterion = make(mode, use_3dmf=use_3dmf)
    images, _ = batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_size": (SIZE, SIZE)}] * 3
    losses = train_losses(model, criterion, images, empty)
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0  # the negatives still teach background
    total.backward()
    grads = [p.grad for p in model.head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "every head parameter gets a (finite) gradient"


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {name: (p.grad is not None and p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def test_gradients_reach_shared_parts_from_both_branches_and_o2m_predictor_only_from_o2m():
    model, criterion = make("dual")
    losses = train_losses(model, criterion, *batch(with_empty=False))
    o2o = sum(v for k, v in losses.items() if k.startswith("o2o/"))
    o2m = sum(v for k, v in losses.items() if k.startswith("o2m/"))
    from_o2o, from_o2m = grads_of(model, o2o), grads_of(model, o2m)
    for shared in ["head.cls_tower.0.weight", "head.reg_tower.0.weight",
                   "backbone.fpn.layer_blocks.0.0.weight", "backbone.body.conv1.weight"]:
        assert from_o2o[shared] and from_o2m[shared], shared
    scales = [n for n in from_o2o if n.startswith("head.scales.")]  # the levels holding positives get gradient
    assert any(from_o2o[n] for n in scales) and any(from_o2m[n] for n in scales)
    o2m_predictor = [n for n in from_o2o if n.startswith("head.predictors.o2m.")]
    o2o_predictor = [n for n in from_o2o if n.startswith("head.predictors.o2o.")]
    assert o2m_predictor and not any(from_o2o[n] for n in o2m_predictor), "o2o loss must not reach the o2m predictor"
    assert o2o_predictor and not any(from_o2m[n] for n in o2o_predictor)
    assert all(from_o2m[n] for n in o2m_predictor) and all(from_o2o[n] for n in o2o_predictor)


def test_every_gt_gets_exactly_one_o2o_positive(monkeypatch):
    import date.assign.one_to_one as one_to_one

    seen = []
    original = one_to_one.match_one_to_one_batched

    def record(quality, num_gts):
        matched = original(quality, num_gts)
        seen.append((matched, num_gts))
        return matched

    monkeypatch.setattr(one_to_one, "match_one_to_one_batched", record)
    train_losses(*make("dual"), *batch())
    matched, num_gts = seen[0]
    for b, m in enumerate(num_gts.tolist()):
        assert (matched[b, :m] >= 0).all() and len(matched[b, :m].unique()) == m
        assert (matched[b, m:] == -1).all()


@pytest.mark.parametrize("use_3dmf", [False, True])
def test_dual_inference_runs_no_o2m_predictor(use_3dmf):
    model, criterion = make("dual", use_3dmf=use_3dmf)
    model.eval()
    calls = {"o2o": 0, "o2m": 0}
    for branch in ("o2o", "o2m"):
        for module in model.head.predictors[branch].values():
            module.register_forward_hook(lambda *_, b=branch: calls.__setitem__(b, calls[b] + 1))
    images, _ = batch()
    model.predict(images, [(SIZE, SIZE)] * 3)
    assert calls["o2m"] == 0
    assert calls["o2o"] == 2 * 5  # cls + box, five levels
    model.train()
    train_losses(model, criterion, *batch())
    assert calls["o2m"] == 3 * 5  # training runs both


@pytest.mark.parametrize("mode", ["o2o", "o2m", "dual"])
def test_predict_format(mode):
    model = make_detector(mode).eval()
    images, _ = batch()
    sizes = [(SIZE, SIZE), (SIZE, 100), (90, 70)]
    results = model.predict(images, sizes)
    assert len(results) == 3
    for result, (h, w) in zip(results, sizes):
        boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
        assert boxes.shape[1] == 4 and len(boxes) == len(scores) == len(labels) <= 100
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
        assert (scores > 0.01).all() and (scores[:-1] >= scores[1:]).all()
        assert labels.dtype == torch.long and ((labels >= 0) & (labels < 3)).all()


def test_o2o_mode_has_no_o2m_predictor_and_o2m_mode_has_no_o2o_predictor():
    assert set(make_detector("o2o").head.predictors) == {"o2o"}
    assert set(make_detector("o2m").head.predictors) == {"o2m"}


def test_topk_o2m_variant_trains():
    losses = train_losses(*make("dual", o2m="topk"), *batch())
    assert set(losses) == EXPECTED_TERMS["dual"] and all(torch.isfinite(v) for v in losses.values())


def test_backbone_from_scratch_trains_everything():
    fpn = build_resnet_fpn(depth=18, weights="none", fpn_channels=64)
    assert all(p.requires_grad for p in fpn.parameters())
    out = fpn(torch.randn(1, 3, SIZE, SIZE))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_backbone_from_local_file_freezes_stem_and_stage1(tmp_path):
    path = tmp_path / "resnet18.pth"
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), path)
    fpn = build_resnet_fpn(depth=18, weights=str(path), fpn_channels=64)
    body = fpn.body
    assert torch.equal(body.conv1.weight, reference.conv1.weight)
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())


def test_backbone_bad_weights_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(BackboneWeightsError, match="no such file"):
        build_resnet_fpn(depth=18, weights=str(tmp_path / "missing.pth"), fpn_channels=64)
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(BackboneWeightsError, match="backbone.depth"):
        build_resnet_fpn(depth=18, weights=str(wrong), fpn_channels=64)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="cannot be read"):
        build_resnet_fpn(depth=18, weights=str(garbage), fpn_channels=64)


def test_imagenet_weights_offline_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    # The machine running the tests may or may not be online: make the download fail the way it does offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(BackboneWeightsError) as error:
        build_resnet_fpn(depth=18, weights="imagenet", fpn_channels=64)
    message = str(error.value)
    assert "backbone.weights=/path/to/resnet18-" in message and "offline" in message


def _overlapping_detector(mode):
    """An untrained detector whose neighbouring locations predict large, overlapping boxes (what an o2m
    head does around each object), and every detection passes the score threshold."""
    model = make_detector(mode).eval()
    branch = model.inference_branch
    with torch.no_grad():
        # o2o: ltrb = relu(x) * stride -> 2 strides per side; o2m: ltrb = exp(x) -> ~20 pixels per side
        model.head.predictors[branch]["box"].bias.fill_(2.0 if branch == "o2o" else 3.0)
    model.decoding.score_thresh = 0.0
    return model


def _same_label_overlaps(pred, thresh):
    iou = torchvision.ops.box_iou(pred["boxes"], pred["boxes"])
    same = pred["labels"][:, None] == pred["labels"][None, :]
    return int(((iou > thresh) & same).triu(diagonal=1).sum())


@pytest.mark.parametrize("mode", ["o2o", "o2m", "dual"])
def test_predict_nms_option_keeps_the_default_and_exposes_raw_detections(mode):
    model = _overlapping_detector(mode)
    images, targets = batch()
    sizes = [t["image_size"] for t in targets]
    default = model.predict(images, sizes)
    raw = model.predict(images, sizes, nms=False)
    suppressed = model.predict(images, sizes, nms=True)
    same_as_default = suppressed if mode == "o2m" else raw
    for d, s in zip(default, same_as_default):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(d[key], s[key]), key
    for r, s in zip(raw, suppressed):
        assert len(r["scores"]) == model.decoding.detections_per_img  # the raw top-k, nothing suppressed
        assert torch.all(r["scores"][:-1] >= r["scores"][1:])
        assert _same_label_overlaps(r, model.decoding.nms_thresh) > 0  # raw: overlapping same-class boxes
        assert _same_label_overlaps(s, model.decoding.nms_thresh) == 0  # NMS: none left
        assert len(s["scores"]) <= model.decoding.detections_per_img


@pytest.mark.parametrize("share_towers", [True, False])
def test_predict_branches_gives_each_branch_what_predict_gives_it(share_towers):
    """Both branches from one forward (the trainer's evaluation of DATE) = each branch predicted alone."""
    model = make_detector("dual", share_towers=share_towers).eval()
    with torch.no_grad():
        for branch in ("o2o", "o2m"):
            model.head.predictors[branch]["box"].bias.fill_(2.0 if branch == "o2o" else 3.0)
    model.decoding.score_thresh = 0.0
    images, targets = batch()
    sizes = [t["image_size"] for t in targets]
    both = model.predict_branches(images, sizes, (None, "o2m"))
    for branch, predictions in zip(("o2o", "o2m"), both):
        alone = model.predict(images, sizes, branch=branch)
        assert len(predictions) == len(alone) == len(sizes)
        for p, a in zip(predictions, alone):
            assert len(p["scores"]) > 0
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(p[key], a[key]), (branch, key)


@pytest.mark.parametrize("mode,nms", [("dual", False), ("o2m", None)])
def test_each_detection_names_the_location_it_was_read_from(mode, nms):
    """Brute force over the head's outputs: a detection's score is its location's class score (o2o: sigmoid of the
    logit; o2m: sqrt(cls * ctr)) and its box that location's point plus its ltrb, clipped to the image."""
    model = make_detector(mode).eval()
    images, targets = batch()
    sizes = [t["image_size"] for t in targets]
    detections = model.predict(images, sizes, nms=nms)
    branch = model.inference_branch
    with torch.no_grad():
        outputs, loc = model(images)
    out = outputs[branch]
    for i, (d, (h, w)) in enumerate(zip(detections, sizes)):
        at, labels = d["locations"], d["labels"]
        assert len(at) == len(d["scores"]) > 0 and at.dtype == torch.long
        cls = out["cls"][i, at, labels].sigmoid()
        expected = cls if branch == "o2o" else torch.sqrt(cls * out["ctr"][i, at].sigmoid())
        torch.testing.assert_close(d["scores"], expected)
        x, y = loc.points[at, 0], loc.points[at, 1]
        ltrb = out["ltrb"][i, at]
        boxes = torch.stack([x - ltrb[:, 0], y - ltrb[:, 1], x + ltrb[:, 2], y + ltrb[:, 3]], dim=1)
        torch.testing.assert_close(d["boxes"], torchvision.ops.clip_boxes_to_image(boxes, (h, w)))
