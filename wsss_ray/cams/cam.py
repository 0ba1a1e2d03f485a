"""Class activation maps as the IRN/ReCAM authors compute them (METHODS.md section 0).

Per scale s: the image at that scale (a ``ScalePyramid``: resized from the uint8 image with PIL
bicubic, then normalised, as IRN's data loader does), run [image, hflip(image)] through the backbone,
``A = relu(conv2d(features, W))`` for all classes at once, fuse the flip pair
``A[img] + A[flip].flip(-1)``, upsample bilinearly to the output size; sum over scales;
keep the requested classes; divide each map by its own max + 1e-5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5


def strided_size(height: int, width: int, stride: int) -> tuple[int, int]:
    return math.ceil(height / stride), math.ceil(width / stride)


@dataclass
class ScalePyramid:
    """A batch at each scale of the map pass, every level resized from the uint8 images (PIL
    bicubic, antialiased) and normalised after, as the authors' data loader makes them
    (``data.augment.network_inputs`` builds it). Shape, device and dtype are the scale-1.0 batch's."""
    levels: dict          # scale -> (N,3,h_s,w_s) normalised tensor; holds 1.0
    pixels: np.ndarray | None = None   # (N,H,W,3) uint8 images the levels came from (InferCam's patches)
    mean: tuple | None = None          # the normalisation of the levels, for patches of ``pixels``
    std: tuple | None = None

    @property
    def base(self) -> torch.Tensor:
        return self.levels[1.0]

    @property
    def shape(self):
        return self.base.shape

    @property
    def device(self):
        return self.base.device

    def level(self, scale: float) -> torch.Tensor:
        if scale not in self.levels:
            raise KeyError(f"scale {scale} was not built into this pyramid (it has {sorted(self.levels)})")
        return self.levels[scale]

    def __getitem__(self, index) -> "ScalePyramid":
        """The same images picked at every level (index the image axis only)."""
        pixels = None
        if self.pixels is not None:
            pixels = self.pixels[index.cpu().numpy() if torch.is_tensor(index) else index]
        return ScalePyramid({s: x[index] for s, x in self.levels.items()}, pixels, self.mean, self.std)

    def to(self, device) -> "ScalePyramid":
        return ScalePyramid({s: x.to(device) for s, x in self.levels.items()}, self.pixels, self.mean, self.std)


Images = Union[torch.Tensor, ScalePyramid]


def network_inputs(images: Sequence, mean, std, scales: Sequence[float], resample: str = "pil",
                   device="cpu") -> Images:
    """uint8 (H,W,3) images of one shape -> the map pass's input: a ``ScalePyramid`` for
    ``resample="pil"`` (the authors'), the normalised scale-1.0 batch for ``"torch"``."""
    from wsss_ray.data.augment import normalise_image, scale_image

    def batch(ims) -> torch.Tensor:
        return torch.from_numpy(np.stack([normalise_image(im, mean, std) for im in ims])).to(device)
    if resample == "torch":
        return batch(images)
    if resample != "pil":
        raise ValueError(f"unknown resample {resample!r}: 'pil' (the authors') or 'torch'")
    return ScalePyramid({float(s): batch([scale_image(im, s) for im in images]) for s in dict.fromkeys((1.0, *scales))},
                        np.stack([np.asarray(im, np.uint8) for im in images]), tuple(mean), tuple(std))


def base_batch(images: Images) -> torch.Tensor:
    """The scale-1.0 (N,3,H,W) batch of a pyramid, or the tensor itself."""
    return images.base if isinstance(images, ScalePyramid) else images


def scaled_batch(images: Images, scale: float) -> torch.Tensor:
    """The batch at ``scale``: a pyramid's own level; a tensor is resized with torch bicubic (no
    antialiasing: ``CamConfig.resample="torch"``, not the authors' resampling). Scale 1 is the batch."""
    if isinstance(images, ScalePyramid):
        return images.level(scale)
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


HIGH_RES_MULTIPLE = 16     # IRN's make_cam: get_strided_up_size(size, 16)


def upsample_maps(maps: torch.Tensor, out_size, image_size=None) -> torch.Tensor:
    """One scale's (N,C,h,w) maps on the output grid, as the authors' code resizes them: a
    stored grid (smaller than the image) bilinearly straight to its size (their ``cam``);
    full resolution (``out_size == image_size``) bilinearly to the multiple of 16 at or above
    the image size, then cropped to it (their ``high_res``). No ``image_size``: straight to ``out_size``."""
    out_size = tuple(int(s) for s in out_size)
    if tuple(maps.shape[-2:]) == out_size:
        return maps                                   # already on the grid (stride-1 features)
    if image_size is None or out_size != tuple(int(s) for s in image_size):
        return F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False)
    up = tuple(-(-s // HIGH_RES_MULTIPLE) * HIGH_RES_MULTIPLE for s in out_size)
    return F.interpolate(maps, size=up, mode="bilinear", align_corners=False)[..., :out_size[0], :out_size[1]]


def multiscale_cam(features_fn: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor,
                   images: Images, out_size: tuple[int, int],
                   scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                   high_res: bool = True) -> torch.Tensor:
    """Un-normalised multi-scale CAM for every class: (N,3,H,W) -> (N,C,*out_size).
    ``high_res=False``: straight to ``out_size`` even at full resolution (InferCam's patches)."""
    total, image_size = None, (base_batch(images).shape[-2:] if high_res else None)
    for scale in scales:
        feats = features_fn(with_flips(scaled_batch(images, scale), flip))
        cams = fuse_flips(torch.relu(class_activation(feats, weight)), flip)
        cams = upsample_maps(cams, out_size, image_size)
        total = cams if total is None else total + cams
    return total


def select_classes(cams: torch.Tensor, classes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Keep each image's GT classes (its own list): one (len(classes[i]), h, w) tensor per image."""
    return [cams[i, list(cls)] for i, cls in enumerate(classes)]


def select_and_normalise(cams: torch.Tensor, classes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Keep each image's GT classes (its own list) and max-normalise each class map."""
    return [normalise_per_map(m) for m in select_classes(cams, classes)]
