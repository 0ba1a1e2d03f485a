"""ReCAM training step against CAM training step: same batches, same process, no Ray.

Times ``classifier_loss`` forward + backward + optimiser step (``build_optimizer``) over the
same pre-augmented batches with recam_lambda = 0 (BCE only, FC2 frozen as the training loop
does) and recam_lambda = 1.0 (BCE + SCE, FC2 trained). The two settings are interleaved
round by round so that drifting machine load hits both alike.

Cases: the tiny backbone on 112 px demo crops, batch 16 (demo_config's TrainConfig), and
EfficientNet-Lite0 at 448 px, batch 4, with its backbone frozen (the reference protocol)
and trainable.

Target: ReCAM step time <= 1.3x CAM step time.

    PYTHONPATH=. .venv/bin/python benchmarks/recam_epoch.py --max-wait 60

No checkpoint needed (random heads; the step cost does not depend on the weights).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from _common import add_load_args, measured, ratio, show
from _models import demo_images
from wsss_ray.cams.training import labels_to_targets
from wsss_ray.data.augment import augment
from wsss_ray.config import ModelConfig, TrainConfig
from wsss_ray.models.classifier import build_classifier
from wsss_ray.stages.pipeline import demo_config
from wsss_ray.stages.train import build_optimizer, classifier_loss


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny-steps", type=int, default=20, help="batches per timed pass")
    p.add_argument("--effnet-steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed passes per setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-effnet", action="store_true")
    add_load_args(p)
    return p.parse_args()


def make_batches(images, labels, steps: int, batch: int, cfg: TrainConfig, model_cfg: ModelConfig, num_classes: int):
    """Pre-augmented (images, targets) batches, as the training loop builds them."""
    rng = np.random.default_rng(0)
    out = []
    for s in range(steps):
        idx = [(s * batch + i) % len(images) for i in range(batch)]
        x = np.stack([augment(images[i], rng, cfg.resize_long, cfg.crop_size, cfg.hflip,
                              model_cfg.image_mean, model_cfg.image_std) for i in idx])
        out.append((torch.from_numpy(x), labels_to_targets([labels[i] for i in idx], num_classes)))
    return out


def setup(model_cfg: ModelConfig, num_classes: int, cfg: TrainConfig):
    """Model + optimiser as train_loop_per_worker builds them for this lambda."""
    torch.manual_seed(0)
    model = build_classifier(model_cfg.backbone, model_cfg.weights, num_classes, model_cfg.freeze_backbone)
    if cfg.recam_lambda <= 0:
        model.fc2.requires_grad_(False)
    model.train()
    return model, build_optimizer(model, cfg)


def train_steps(model, optimizer, batches, cfg: TrainConfig) -> float:
    start = time.perf_counter()
    for x, y in batches:
        loss, _ = classifier_loss(model, x, y, cfg, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def compare(name: str, model_cfg: ModelConfig, cfg: TrainConfig, batches, num_classes: int, rounds: int) -> dict:
    settings = {"cam": dataclasses.replace(cfg, recam_lambda=0.0), "recam": dataclasses.replace(cfg, recam_lambda=1.0)}
    state = {k: setup(model_cfg, num_classes, c) for k, c in settings.items()}
    for k, c in settings.items():                       # warm-up: one step each
        train_steps(*state[k], batches[:1], c)
    times = {k: [] for k in settings}
    for _ in range(rounds):
        for k, c in settings.items():
            times[k].append(train_steps(*state[k], batches, c) / len(batches))
    out = {k: {"step_seconds_median": statistics.median(v), "step_seconds_runs": v} for k, v in times.items()}
    out["recam_over_cam"] = ratio(out["recam"]["step_seconds_median"], out["cam"]["step_seconds_median"])
    out["batch_shape"] = list(batches[0][0].shape)
    print(f"{name}: batch {tuple(batches[0][0].shape)}", flush=True)
    show("CAM step (lambda 0) seconds", out["cam"]["step_seconds_median"])
    show("ReCAM step (lambda 1) seconds", out["recam"]["step_seconds_median"])
    show("ReCAM / CAM (target <= 1.3)", out["recam_over_cam"])
    return out


def tiny_case(args) -> dict:
    cfg = demo_config("unused").train
    model_cfg = ModelConfig(backbone="tiny", weights="none")
    images, _, labels = demo_images(max(cfg.batch_size * args.tiny_steps, 16))
    batches = make_batches(images, labels, args.tiny_steps, cfg.batch_size, cfg, model_cfg, 5)
    return compare("tiny @112", model_cfg, cfg, batches, 5, args.rounds)


def effnet_case(args, frozen: bool) -> dict:
    from wsss_ray.stages.pipeline import coco_config
    ref = coco_config("unused", "unused", protocol="reference")
    cfg = dataclasses.replace(ref.train, batch_size=4, lr_backbone=0.0 if frozen else 1e-4, resize_long=(448, 448),
                              crop_size=448)
    model_cfg = dataclasses.replace(ref.model, freeze_backbone=frozen)
    # 448 px crops of enlarged demo scenes: pixel content does not change the cost
    images, _, labels = demo_images(4 * args.effnet_steps)
    batches = make_batches(images, [[c % 20 for c in l] for l in labels], args.effnet_steps, 4, cfg, model_cfg, 20)
    name = f"efficientnet_lite0 @448 ({'frozen backbone' if frozen else 'trainable backbone'})"
    out = compare(name, model_cfg, cfg, batches, 20, args.rounds)
    if frozen:
        out["probe"] = probe_step(model_cfg, cfg, batches, args.rounds)
    return out


def probe_step(model_cfg: ModelConfig, cfg: TrainConfig, batches, rounds: int) -> dict:
    """The CAM linear probe as the training loop runs it with a frozen backbone and no crop
    (``train.probe_mode``): steps on cached pooled features. ReCAM cannot use it (the SCE
    term needs the spatial feature map), so its steps always run the backbone."""
    cam_cfg = dataclasses.replace(cfg, recam_lambda=0.0)
    model, optimizer = setup(model_cfg, 20, cam_cfg)
    with torch.no_grad():
        pooled = [(model.features(x).mean((2, 3), keepdim=True), y) for x, y in batches]
    def steps():
        start = time.perf_counter()
        for f, y in pooled:
            loss, _ = classifier_loss(model, f, y, cam_cfg, 1, from_features=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / len(pooled)
    steps()
    step = statistics.median(steps() for _ in range(rounds))
    show("CAM linear-probe step on cached features seconds", step)
    return {"step_seconds_median": step, "note": "cached pooled features; the one-off caching pass is not included"}


def run_all(args) -> dict:
    torch.set_num_threads(args.threads)
    out = {"tiny": tiny_case(args)}
    if not args.skip_effnet:
        out["effnet_frozen"] = effnet_case(args, frozen=True)
        out["effnet_trainable"] = effnet_case(args, frozen=False)
    return out


def main() -> None:
    args = parse_args()
    measured("recam_epoch", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
