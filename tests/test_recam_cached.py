"""ReCAM on a frozen backbone: a schedule counted in optimizer steps (``min_steps``) and the
heads trained on cached feature maps (``cached_features``), exact against the image path."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_ray.config import ModelConfig, TrainConfig
from wsss_ray.data.augment import window_at_origin
from wsss_ray.stages.engine import epoch_schedule
from wsss_ray.stages.train import classifier_loss, probe_batches, probe_mode


def test_min_steps_grow_the_epochs_and_never_shrink_them():
    # 10 images over 2 ranks, 2 a rank per step: 3 steps an epoch
    grown = epoch_schedule(10, batch_size=4, world=2, epochs=3, min_steps=20)
    assert (grown.steps_per_epoch, grown.epochs, grown.total_steps) == (3, 7, 21)
    kept = epoch_schedule(10, batch_size=4, world=2, epochs=3, min_steps=5)
    assert (kept.epochs, kept.total_steps) == (3, 9)


def test_window_at_origin_by_hand():
    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5) + 1
    out = window_at_origin(x, 4)
    assert out.shape == (2, 4, 4)
    assert np.array_equal(out[:, :3, :4], x[:, :, :4])          # top-left window of the wide side
    assert not out[:, 3:].any()                                 # zero pad below the short side


FROZEN = ModelConfig(backbone="tiny", weights="none", freeze_backbone=True)


def test_cached_features_need_a_frozen_backbone_and_a_fixed_long_side():
    recam = TrainConfig(resize_long=(64, 64), crop_size=64, recam_lambda=0.1)
    assert probe_mode(recam, FROZEN) is False                    # ReCAM on images unless asked
    assert probe_mode(dataclasses.replace(recam, cached_features=True), FROZEN) is True
    assert probe_mode(TrainConfig(resize_long=(64, 64), crop_size=0), FROZEN) is True    # the CAM probe
    with pytest.raises(ValueError, match="frozen backbone"):
        probe_mode(dataclasses.replace(recam, cached_features=True), dataclasses.replace(FROZEN, freeze_backbone=False))
    with pytest.raises(ValueError, match="fixed long side"):
        probe_mode(dataclasses.replace(recam, cached_features=True, resize_long=(48, 64)), FROZEN)


def test_recam_loss_and_gradients_on_cached_maps_equal_the_image_path():
    from wsss_ray.models.classifier import build_classifier
    torch.manual_seed(0)
    model = build_classifier("tiny", "none", 4, freeze_backbone=True)
    with torch.no_grad():
        model.fc2.weight.normal_()                               # a trained-looking FC2, not zeros
    cfg = TrainConfig(recam_lambda=0.1, crop_size=64, cached_features=True)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(np.stack([window_at_origin(rng.normal(size=(3, 40 + 8 * i, 64)).astype(np.float32), 64)
                                        for i in range(3)]))
    targets = torch.tensor([[1., 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0]])

    def loss_and_grads(x, from_features):
        model.zero_grad()
        loss, parts = classifier_loss(model, x, targets, cfg, world=1, from_features=from_features)
        loss.backward()
        return float(loss), parts, [p.grad.clone() for p in (model.head.weight, model.fc2.weight)]

    on_images = loss_and_grads(images, False)
    with torch.no_grad():
        cached = model.features(images)
    on_cache = loss_and_grads(cached, True)
    assert on_cache[1]["sce"] > 0 and on_cache[0] == pytest.approx(on_images[0], rel=1e-6)
    for a, b in zip(on_images[2], on_cache[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_cached_batches_are_feature_maps_with_a_view_drawn_per_image():
    schedule = epoch_schedule(5, batch_size=2, world=1, epochs=2)
    probe = {i: (torch.full((2, 3, 4, 5), float(i)) + torch.tensor([0., 0.5])[:, None, None, None], [i % 2])
             for i in range(5)}
    batches = list(probe_batches(probe, 5, schedule, seed=0, rank=0, world=1, start_epoch=0, num_classes=2))
    assert len(batches) == schedule.total_steps == 6
    assert all(b["x"].shape[1:] == (3, 4, 5) and b["from_features"] for b in batches)
    seen = torch.cat([b["x"][:, 0, 0, 0] for b in batches[:3]])
    assert sorted(seen.floor().tolist()) == [0, 1, 2, 3, 4]      # every image once an epoch, one of its views
    assert set((seen - seen.floor()).tolist()) <= {0.0, 0.5}


@pytest.mark.slow
def test_cached_recam_trains_min_steps_and_a_rerun_after_an_interrupt_ends_the_same(quick_run, tmp_path):
    from test_engine import _assert_rerun_reproduces
    from wsss_ray.models.checkpoint import load_state
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.train import train_classifier
    run_dir, cfg, _ = quick_run
    run = tmp_path / "run"
    shutil.copytree(Path(run_dir, "manifest"), run / "manifest")
    frozen = dataclasses.replace(cfg.model, freeze_backbone=True)
    train = dataclasses.replace(cfg.recam_train, epochs=1, min_steps=20, resize_long=(112, 112), crop_size=112,
                                cached_features=True, num_workers=2, checkpoint_every=2)
    out = _assert_rerun_reproduces(run, "recam", lambda: train_classifier(RunDir(str(run)), "recam", frozen, train))
    # 96 images, 8 a rank per step: 6 steps an epoch, 4 epochs for 20 steps, saved after epochs 2 and 4
    assert out["epoch"] == 3
    assert sorted(p.name for p in (run / "checkpoints" / "recam" / "epochs").iterdir()) == ["epoch-001", "epoch-003"]
    state = load_state(str(run / "checkpoints" / "recam"))
    assert state["fc2.weight"].abs().sum() > 0


def test_the_reference_protocol_trains_recam_on_cached_maps_for_the_papers_steps():
    from wsss_ray.stages.pipeline import coco_config
    ref = coco_config("unused", "/data/coco", protocol="reference").recam_train
    assert (ref.cached_features, ref.min_steps, ref.crop_size, ref.resize_long) == (True, 2600, 448, (448, 448))
    assert ref.checkpoint_every == 25
    coco = coco_config("unused", "/data/coco").recam_train             # a trained backbone: images, epochs
    assert (coco.cached_features, coco.min_steps) == (False, 0)


def test_recam_training_options_reach_the_config_from_the_command_line():
    import argparse
    from wsss_ray.cli import add_pipeline_args, config_from_args
    parser = argparse.ArgumentParser()
    add_pipeline_args(parser, "cam")
    argv = ["--coco-root", "/data/coco", "--protocol", "reference", "--recam-train", "min_steps=0,cached_features=false"]
    cfg = config_from_args(parser.parse_args(argv))
    assert (cfg.recam_train.min_steps, cfg.recam_train.cached_features, cfg.recam_train.lr_fc2) == (0, False, 5e-4)
    with pytest.raises(SystemExit, match="--recam-train"):
        config_from_args(parser.parse_args(["--recam-train", "min_stepz=3"]))
