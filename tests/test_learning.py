"""Each detector mode can overfit a handful of synthetic images (AP50 by pycocotools' COCOeval)."""
import pytest
import torch

from date.config import compose_config
from date.coco_eval import evaluate
from date.data.build import build_datasets, transform_sizes
from date.data.coco import CocoDetection
from date.data.loader import collate
from date.data.transforms import build_transforms
from date.modeling.build import build_criterion, build_detector

MAX_STEPS = 250
CHECK_EVERY = 25  # o2o and dual pass at the first check; o2m needs about 75 steps


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    """Four synthetic images (up to 8 objects each), with evaluation transforms (no flip)."""
    # No clusters, no thin or tiny objects: the test is whether each mode can learn at all; crowded clusters and
    # objects of 12 px (where FCOS gets few positive locations: o2m needed 225 steps, not 75) are the benchmark's
    # business.
    overrides = ["num_train=4", "num_val=2", "max_objects=8", "max_distractors=2", "cluster_prob=0",
                 "max_aspect_ratio=2", "min_object_size=16", f"cache_dir={tmp_path_factory.mktemp('data')}"]
    cfg = compose_config([f"dataset.{o}" for o in overrides]).dataset
    train, _ = build_datasets(cfg)
    dataset = CocoDetection(ann_file=train.ann_file, image_dir=train.image_dir,  # no flip: evaluation transforms
                            transforms=build_transforms(train=False, **transform_sizes(cfg)))
    return dataset, collate([dataset[i] for i in range(len(dataset))])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["o2m", "o2o", "dual"])
def test_mode_overfits_a_handful_of_images(handful, mode):
    dataset, (images, targets) = handful
    cfg = compose_config([f"assigner={mode}", "backbone.fpn_channels=64", "model.num_convs=2"])
    torch.manual_seed(0)
    model, criterion = build_detector(cfg, num_classes=dataset.num_classes), build_criterion(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    history = []
    for step in range(1, MAX_STEPS + 1):
        loss = criterion(*model(images), targets, step / MAX_STEPS).total
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
