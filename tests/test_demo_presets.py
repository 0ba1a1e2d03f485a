"""The demo world's two classifiers: the tiny CNN from scratch (default) and the ImageNet
EfficientNet-Lite0 probe whose ReCAM stage fine-tunes the backbone."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from wsss_ray.cli import add_pipeline_args, config_from_args
from wsss_ray.stages.pipeline import demo_config, recam_model


def parse(argv):
    parser = argparse.ArgumentParser()
    add_pipeline_args(parser, "cam")
    return config_from_args(parser.parse_args(argv))


def test_default_demo_is_the_tiny_backbone_and_recam_trains_what_cam_trained():
    cfg = parse(["--methods", "cam,recam"])
    assert (cfg.model.backbone, cfg.model.weights, cfg.model.freeze_backbone) == ("tiny", "none", False)
    assert not cfg.recam_unfreeze and recam_model(cfg) == cfg.model
    assert cfg.cam.scales == (1.0, 0.5, 1.5, 2.0)


def test_imagenet_demo_probes_a_frozen_backbone_and_recam_fine_tunes_it():
    cfg = parse(["--methods", "cam,recam", "--demo-backbone", "efficientnet_lite0"])
    assert (cfg.model.backbone, cfg.model.weights, cfg.model.freeze_backbone) == ("efficientnet_lite0", "imagenet", True)
    # the CAM stage is the reference protocol's linear probe on cached 224 px features
    assert (cfg.train.crop_size, cfg.train.resize_long, cfg.train.lr_backbone) == (0, (224, 224), 0.0)
    assert recam_model(cfg).freeze_backbone is False and recam_model(cfg).backbone == "efficientnet_lite0"
    assert (cfg.recam_train.crop_size, cfg.recam_train.recam_lambda, cfg.recam_train.lr_fc2) == (224, 1.0, 5e-4)
    assert cfg.cam.scales == (2.0, 1.0, 3.0, 4.0)       # (1, 0.5, 1.5, 2) around 224 px on the 112 px scenes


def test_recam_unfreeze_never_freezes_a_trained_backbone():
    cfg = dataclasses.replace(demo_config("unused"), recam_unfreeze=True)
    assert recam_model(cfg).freeze_backbone is False
    frozen = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze_backbone=True), recam_unfreeze=False)
    assert recam_model(frozen).freeze_backbone is True


def test_unknown_demo_backbone_is_refused():
    with pytest.raises(ValueError, match="demo backbone 'resnet9'"):
        demo_config("unused", backbone="resnet9")
    with pytest.raises(SystemExit):
        parse(["--demo-backbone", "resnet9"])
