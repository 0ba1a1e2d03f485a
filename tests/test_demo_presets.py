"""The demo world's two classifiers: the tiny CNN from scratch (default) and the ImageNet
EfficientNet-Lite0 probe whose ReCAM stage fine-tunes the backbone."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from wsss_ray.cli import add_pipeline_args, config_from_args
from wsss_ray.config import recam_model
from wsss_ray.stages.pipeline import demo_config


def parse(argv):
    parser = argparse.ArgumentParser()
    add_pipeline_args(parser, "cam")
    return config_from_args(parser.parse_args(argv))


def test_default_demo_is_the_tiny_backbone_and_recam_trains_what_cam_trained():
    cfg = parse(["--methods", "cam,recam"])
    assert (cfg.model.backbone, cfg.model.weights, cfg.model.freeze_backbone) == ("tiny", "none", False)
    assert not cfg.recam_unfreeze and recam_model(cfg.model, cfg.recam_unfreeze) == cfg.model
    assert cfg.cam.scales == (1.0, 0.5, 1.5, 2.0)


def test_imagenet_demo_probes_a_frozen_backbone_and_recam_fine_tunes_it():
    cfg = parse(["--methods", "cam,recam", "--demo-backbone", "efficientnet_lite0"])
    assert (cfg.model.backbone, cfg.model.weights, cfg.model.freeze_backbone) == ("efficientnet_lite0", "imagenet", True)
    # the CAM stage is the reference protocol's linear probe on cached 224 px features
    assert (cfg.train.crop_size, cfg.train.resize_long, cfg.train.lr_backbone) == (0, (224, 224), 0.0)
    recam = recam_model(cfg.model, cfg.recam_unfreeze)
    assert recam.freeze_backbone is False and recam.backbone == "efficientnet_lite0"
    assert (cfg.recam_train.crop_size, cfg.recam_train.recam_lambda, cfg.recam_train.lr_fc2) == (224, 1.0, 5e-4)
    assert cfg.cam.scales == (2.0, 1.0, 3.0, 4.0)       # (1, 0.5, 1.5, 2) around 224 px on the 112 px scenes


def test_recam_unfreeze_never_freezes_a_trained_backbone():
    cfg = dataclasses.replace(demo_config("unused"), recam_unfreeze=True)
    assert recam_model(cfg.model, cfg.recam_unfreeze).freeze_backbone is False
    frozen = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze_backbone=True), recam_unfreeze=False)
    assert recam_model(frozen.model, frozen.recam_unfreeze).freeze_backbone is True


def test_sweeps_read_recam_unfreeze_from_the_run_config(tmp_path):
    from wsss_ray.config import to_dict
    from wsss_ray.rundir import RunDir
    from wsss_ray.rundir import run_config          # a sweep's ReCAM trials train what the job trained
    for backbone, unfreeze in (("efficientnet_lite0", True), ("tiny", False)):
        run = RunDir(str(tmp_path / backbone))
        run.write_json(run.uri("config.json"), to_dict(demo_config(str(tmp_path / backbone), backbone=backbone)))
        cfg = run_config(run)
        assert cfg["recam_unfreeze"] is unfreeze and cfg["model"].backbone == backbone
        assert recam_model(cfg["model"], cfg["recam_unfreeze"]).freeze_backbone is False


def test_unknown_demo_backbone_is_refused():
    with pytest.raises(ValueError, match="demo backbone 'resnet9'"):
        demo_config("unused", backbone="resnet9")
    with pytest.raises(SystemExit):
        parse(["--demo-backbone", "resnet9"])


def test_recam_job_runs_the_demo_world_on_the_imagenet_backbone_by_default():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "jobs" / "recam_voc.py"
    spec = importlib.util.spec_from_file_location("recam_voc", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    from wsss_ray.cli import config_from_args
    parser = job.job_parser()

    def build(argv):
        return config_from_args(parser.parse_args(argv), parser)
    cfg = build(["--run-dir", "unused"])
    assert cfg.methods == ("cam", "recam") and cfg.model.backbone == "efficientnet_lite0" and cfg.recam_unfreeze
    assert build([]).run_dir == "runs/recam_demo"
    assert build(["--demo-backbone", "tiny"]).model.backbone == "tiny"
    voc = build(["--config", "configs/voc_recam.yaml", "-o", "dataset.root=/data/VOC2012"])
    assert (voc.dataset.kind, voc.model.backbone, voc.recam_train.recam_lambda) == ("voc", "resnet50", 1.0)
    assert voc.methods == ("cam", "recam")


def test_the_job_extracts_the_chosen_recam_weight_and_infercam_only_unless_asked_for_more():
    from wsss_ray.config import InferCamConfig
    from wsss_ray.stages.pipeline import infercam_variants, recam_weights
    cfg = parse(["--methods", "cam,recam,infercam"])
    assert recam_weights(cfg) == {"recam": "w*w'"}
    assert infercam_variants(cfg) == {"infercam": InferCamConfig()}
    cfg = parse(["--methods", "cam,recam,infercam", "--recam-weight", "w'", "--recam-all-weights",
                 "--infercam-ablation", "--infercam", "erase=union"])
    assert recam_weights(cfg) == {"recam": "w'", "recam_w": "w", "recam_wsum": "w+w'", "recam_wprod": "w*w'"}
    variants = infercam_variants(cfg)
    assert set(variants) == {"infercam", "infercam_split", "infercam_iter"}
    assert (variants["infercam_split"].split, variants["infercam_split"].iterate) == (True, False)
    assert (variants["infercam_iter"].split, variants["infercam_iter"].iterate) == (False, True)
    assert all(v.erase == "union" for v in variants.values())          # the ablation keeps the options
    with pytest.raises(ValueError, match="recam_weight 'w2'"):
        dataclasses.replace(cfg, recam_weight="w2")


def test_cam_and_lpcam_options_replace_the_presets_fields():
    base = parse(["--methods", "cam,lpcam"])
    cfg = parse(["--methods", "cam,lpcam", "--cam", "resample=torch,scales=1.0/0.5",
                 "--lpcam", "fallback=best_one,kmeans_redo=4,tau=0.2"])
    assert (cfg.cam.resample, cfg.cam.scales) == ("torch", (1.0, 0.5))
    assert cfg.cam.store_stride == base.cam.store_stride and cfg.cam.num_actors == base.cam.num_actors
    assert (cfg.lpcam.fallback, cfg.lpcam.kmeans_redo, cfg.lpcam.tau) == ("best_one", 4, 0.2)
    assert cfg.lpcam.k == base.lpcam.k                         # the preset's K is kept
    assert base.cam.resample == "pil" and base.lpcam.fallback == "near_best"
    with pytest.raises(SystemExit, match="--cam: resample must be"):
        parse(["--cam", "resample=bilinear"])
    with pytest.raises(SystemExit, match="--lpcam: fallback must be"):
        parse(["--lpcam", "fallback=none"])
