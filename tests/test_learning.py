"""Each detector mode can overfit a handful of synthetic images (AP50 by pycocotools' COCOeval)."""
from types import SimpleNamespace

import pytest
import torch

from date.coco_eval import evaluate
from date.data.build import build_datasets, load_dataset_config
from date.data.coco import CocoDetection
from date.data.loader import collate
from date.data.transforms import build_transforms
from date.losses import DEFAULT_TERM_WEIGHTS, total_loss
from date.modeling import build_detector

MAX_STEPS = 250
CHECK_EVERY = 50


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    """Four synthetic images (up to 8 objects each), with evaluation transforms (no flip)."""
    # No clusters and no thin objects: the test is whether each mode can learn at all; crowded clusters
    # (where FCOS leaves objects without any positive location) are the benchmark's business.
    cfg = load_dataset_config("synthetic", ["num_train=4", "num_val=2", "max_objects=8", "max_distractors=2",
                                            "cluster_prob=0", "max_aspect_ratio=2", "min_object_size=12",
                                            f"cache_dir={tmp_path_factory.mktemp('data')}"])
    train, _ = build_datasets(cfg)
    sizes = dict(train_short_sizes=[128], max_size=128, test_short_size=128, multiscale_short_sizes=[128],
                 multiscale_crop_resize=[128], multiscale_crop_size=[64, 128])
    dataset = CocoDetection(ann_file=train.ann_file, image_dir=train.image_dir,
                            transforms=build_transforms(train=False, **sizes))
    return dataset, collate([dataset[i] for i in range(len(dataset))]), list(cfg.size_of_interest)


@pytest.mark.parametrize("mode", ["o2m", "o2o", "dual"])
def test_mode_overfits_a_handful_of_images(handful, mode):
    dataset, (images, targets), size_of_interest = handful
    torch.manual_seed(0)
    model = build_detector(
        backbone=SimpleNamespace(depth=18, weights="none", fpn_channels=64),
        assigner=SimpleNamespace(mode=mode, o2m="fcos", poto_alpha=0.8, poto_center_radius=1.5,
                                 fcos_center_sampling=None, topk=10, topk_alpha=0.5, topk_beta=6.0),
        model=SimpleNamespace(num_convs=2, use_3dmf=False, prior_prob=0.01, size_of_interest=size_of_interest,
                              score_thresh=0.01, topk_candidates=100, detections_per_img=100, nms_thresh=0.6),
        num_classes=dataset.num_classes,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    history = []
    for step in range(1, MAX_STEPS + 1):
        loss = total_loss(model(images, targets), DEFAULT_TERM_WEIGHTS, {"o2o": 1.0, "o2m": 1.0})
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % CHECK_EVERY == 0:
            stats, _ = evaluate(model=model, loader=[(images, targets)], coco_gt=dataset.coco,
                                label_to_category_id=dataset.label_to_category_id, device=torch.device("cpu"))
            history.append((step, round(stats["AP50"], 3)))
            if stats["AP50"] >= 0.9:
                break
    assert history[-1][1] >= 0.9, f"{mode}: AP50 by step {history}"
