"""Models and image batches the benchmarks share (no Ray here)."""
from __future__ import annotations

import numpy as np
import torch

from wsss_ray.cams.cam import scaled_batch, with_flips
from wsss_ray.data.augment import normalise_image
from wsss_ray.config import ModelConfig

SCALES = (1.0, 0.5, 1.5, 2.0)


def tiny_model(checkpoint: str = "", num_classes: int = 5):
    """The demo's tiny backbone: a trained checkpoint when given, else random weights."""
    if checkpoint:
        from wsss_ray.models.checkpoint import load_classifier
        model, cfg, _ = load_classifier(checkpoint)
        return model.eval(), cfg
    from wsss_ray.models.classifier import build_classifier
    torch.manual_seed(0)
    return build_classifier("tiny", "none", num_classes).eval(), ModelConfig()


def effnet_model(checkpoint: str = "", num_classes: int = 20):
    """EfficientNet-Lite0: a trained checkpoint when given, else ImageNet backbone + random head."""
    if checkpoint:
        from wsss_ray.models.checkpoint import load_classifier
        model, cfg, _ = load_classifier(checkpoint)
        return model.eval(), cfg
    from wsss_ray.models.classifier import build_classifier
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "imagenet", num_classes, freeze_backbone=True)
    return model.eval(), ModelConfig(backbone="efficientnet_lite0", weights="imagenet", freeze_backbone=True)


def demo_images(count: int, start: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[list[int]]]:
    """Demo-world scenes (RGB uint8, GT mask, labels), rendered deterministically."""
    from wsss_ray.data.demo import render_demo_image
    images, masks, labels = [], [], []
    for index in range(start, start + count):
        image, mask, present = render_demo_image(0, index)
        images.append(image)
        masks.append(mask)
        labels.append(list(present))
    return images, masks, labels


def to_tensor(images: list[np.ndarray], cfg: ModelConfig) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalise_image(im, cfg.image_mean, cfg.image_std) for im in images]))


def random_batch(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A normalised-looking batch; backbone cost does not depend on pixel values."""
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def scale_inputs(images: torch.Tensor, scales=SCALES, flip: bool = True) -> list[torch.Tensor]:
    """The backbone inputs CAM uses: every scale, each with its flipped copy, resized up front."""
    return [with_flips(scaled_batch(images, s), flip) for s in scales]


def coco_rows(run_dir: str, root: str, split: str, limit: int, class_subset: str = "voc20") -> tuple[list[dict], int]:
    """A fresh COCO manifest (GT masks painted) in ``run_dir``; returns (rows, num_classes)."""
    import shutil
    from wsss_ray.config import DatasetConfig
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.manifest import build_manifest
    shutil.rmtree(run_dir, ignore_errors=True)      # the manifest stage would reuse an older one
    run = RunDir(run_dir)
    build_manifest(run, DatasetConfig(kind="coco", root=root, split=split, class_subset=class_subset, limit=limit))
    table, classes = read_manifest(run.manifest())
    return table.to_pylist(), classes.num_classes
