"""experiment=crowdhuman_r50: the official CrowdHuman recipe of DATE / DeFCN, for every mode, as the composed
config holds it (the paper's hyperparameter table, key by key)."""
import pytest
from hydra import compose, initialize_config_dir

from date.config import CONF_DIR, compose_config


@pytest.mark.parametrize("mode", ["dual", "o2o", "o2m"])
def test_the_recipe_is_the_official_one_for_every_mode(mode):
    cfg = compose_config(["experiment=crowdhuman_r50", "dataset.root=/data/crowdhuman", f"assigner={mode}"])
    assert cfg.assigner.mode == mode
    assert (cfg.backbone.depth, cfg.backbone.weights) == (50, "imagenet")
    assert cfg.dataset.kind == "crowdhuman" and cfg.dataset.root == "/data/crowdhuman"
    # 16 images per step on 8 GPUs; AdamW 4e-4, backbone x0.1, warm-up 1,000 from 0.001, clip 0.1
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        launcher = compose(config_name="config", overrides=["experiment=crowdhuman_r50", "dataset.root=/data/crowdhuman"],
                           return_hydra_config=True).hydra.launcher
    assert cfg.batch_size * launcher.gpus_per_node == 16 and launcher.tasks_per_node == launcher.gpus_per_node
    assert (cfg.optim.lr, cfg.optim.backbone_lr_mult, cfg.optim.clip_grad_norm) == (4e-4, 0.1, 0.1)
    assert (cfg.schedule.warmup_iters, cfg.schedule.warmup_ratio) == (1000, 0.001)
    # 30k iterations, lr x0.1 near 20k and 25k, in epochs of 15,000 images at 16 per step (937 steps)
    steps = 15000 // 16
    assert cfg.schedule.epochs * steps == 29984 and [e * steps for e in cfg.schedule.lr_steps] == [19677, 25299]
    assert str(cfg.schedule.augmentation) == "3x"
    assert list(cfg.dataset.multiscale_short_sizes) == list(range(640, 897, 32))
    assert list(cfg.dataset.train_short_sizes) == list(range(640, 897, 32)) and cfg.dataset.max_size == 1400
    assert list(cfg.dataset.multiscale_crop_resize) == [400, 500, 600]
    assert list(cfg.dataset.multiscale_crop_size) == [384, 600] and cfg.dataset.test_short_size == 800
    assert (cfg.model.detections_per_img, cfg.model.score_thresh) == (500, 0.01)
    assert cfg.model.topk_candidates * 5 >= cfg.model.detections_per_img  # 5 levels can fill the 500
