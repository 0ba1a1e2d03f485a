"""Classifier training math: losses, schedules, augmentation. Pure torch."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def multilabel_soft_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over classes and images of BCE with logits (torch's multilabel_soft_margin_loss)."""
    return F.multilabel_soft_margin_loss(logits, targets)


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    return base_lr * (1 - step / max(1, total_steps)) ** power


def labels_to_targets(labels: list[list[int]], num_classes: int) -> torch.Tensor:
    targets = torch.zeros(len(labels), num_classes)
    for i, cls in enumerate(labels):
        targets[i, list(cls)] = 1.0
    return targets


def normalise_image(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (H,W,3) -> float32 (3,H,W) normalised."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def resize_long_side(image: np.ndarray, long_side: int, resample=None) -> np.ndarray:
    from PIL import Image
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if abs(scale - 1.0) < 1e-9:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, resample if resample is not None else Image.BICUBIC))


def augment(image: np.ndarray, rng: np.random.Generator, resize_long: tuple, crop: int, hflip: bool,
            mean, std) -> np.ndarray:
    """The authors' augmentation: random long side, hflip, normalise, random crop with zero pad."""
    if crop <= 0:
        raise ValueError("crop_size 0 (no crop) is only for the frozen-backbone linear probe; "
                         "image batches need a fixed crop size")
    image = resize_long_side(image, int(rng.integers(resize_long[0], resize_long[1] + 1)))
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    x = normalise_image(image, mean, std)
    _, h, w = x.shape
    out = np.zeros((3, crop, crop), np.float32)
    # a window of the crop size over the (possibly smaller) image: pad where it does not reach
    top, left = int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))
    ch, cw = min(crop, h), min(crop, w)
    oy, ox = int(rng.integers(0, crop - ch + 1)), int(rng.integers(0, crop - cw + 1))
    out[:, oy:oy + ch, ox:ox + cw] = x[:, top:top + ch, left:left + cw]
    return out
