"""Class activation maps as the IRN/ReCAM authors compute them (METHODS.md section 0).

Per scale s: resize the image (bicubic), run [image, hflip(image)] through the backbone,
``A = relu(conv2d(features, W))`` for all classes at once, fuse the flip pair
``A[img] + A[flip].flip(-1)``, upsample bilinearly to the output size; sum over scales;
keep the requested classes; divide each map by its own max + 1e-5.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

EPS = 1e-5


def strided_size(height: int, width: int, stride: int) -> tuple[int, int]:
    return math.ceil(height / stride), math.ceil(width / stride)


def scaled_batch(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bicubic resize of an (N,3,H,W) batch; scale 1 returns the batch itself."""
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False)


def with_flips(images: torch.Tensor, flip: bool) -> torch.Tensor:
    return torch.cat([images, images.flip(-1)], 0) if flip else images


def fuse_flips(maps: torch.Tensor, flip: bool) -> torch.Tensor:
    """(2N, ...) maps of [images, flipped images] -> (N, ...) sum with the flip undone."""
    if not flip:
        return maps
    n = maps.shape[0] // 2
    return maps[:n] + maps[n:].flip(-1)


def class_activation(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """All classes at once: (N,D,h,w) x (C,D) -> (N,C,h,w) raw (un-ReLU'd) activation."""
    return F.conv2d(features, weight.reshape(weight.shape[0], -1, 1, 1))


def normalise_per_map(maps: torch.Tensor) -> torch.Tensor:
    """Divide each (..., h, w) map by its own max + 1e-5 (the authors' normalisation)."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return maps / (peak + EPS)


def multiscale_cam(features_fn: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor,
                   images: torch.Tensor, out_size: tuple[int, int],
                   scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True) -> torch.Tensor:
    """Un-normalised multi-scale CAM for every class: (N,3,H,W) -> (N,C,*out_size)."""
    total = None
    for scale in scales:
        feats = features_fn(with_flips(scaled_batch(images, scale), flip))
        cams = fuse_flips(torch.relu(class_activation(feats, weight)), flip)
        cams = F.interpolate(cams, size=out_size, mode="bilinear", align_corners=False)
        total = cams if total is None else total + cams
    return total


def select_classes(cams: torch.Tensor, classes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Keep each image's GT classes (its own list): one (len(classes[i]), h, w) tensor per image."""
    return [cams[i, list(cls)] for i, cls in enumerate(classes)]


def select_and_normalise(cams: torch.Tensor, classes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Keep each image's GT classes (its own list) and max-normalise each class map."""
    return [normalise_per_map(m) for m in select_classes(cams, classes)]
