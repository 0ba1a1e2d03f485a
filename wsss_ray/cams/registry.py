"""Map methods by name: each builds ``fn(images, classes, out_size) -> list of (c,h,w) maps``
from a trained classifier and its parameters. The extraction stage and ``wsss_ray.api`` call
only this. ``normalise=False`` (CAM, LPCAM, AdvCAM): the maps before their max-normalisation."""
from __future__ import annotations

from typing import Callable

import torch

from wsss_ray.cams.cam import multiscale_cam, select_and_normalise, select_classes

MapFn = Callable[[torch.Tensor, list, tuple], list]


def cam_map_fn(model, scales=(1.0, 0.5, 1.5, 2.0), flip=True, variant="w", normalise=True, **_) -> MapFn:
    weight = model.cam_weight(variant).detach()
    select = select_and_normalise if normalise else select_classes

    def fn(images, classes, out_size):
        cams = multiscale_cam(model.features, weight, images, out_size, scales, flip)
        return select(cams, classes)
    return fn


def lpcam_map_fn(model, prototypes=None, scales=(1.0, 0.5, 1.5, 2.0), flip=True, fg_only=False, normalise=True,
                 **_) -> MapFn:
    """``prototypes``: a prototypes table (the stage's Parquet) or a ``PrototypeBank``."""
    from wsss_ray.cams.lpcam import PrototypeBank, multiscale_lpcam
    bank = prototypes if isinstance(prototypes, PrototypeBank) else \
        PrototypeBank.from_table(prototypes, model.head.weight.shape[0])

    def fn(images, classes, out_size):
        return multiscale_lpcam(model.features, bank, images, classes, out_size, scales, flip, fg_only, normalise)
    return fn


def infercam_map_fn(model, scales=(1.0, 0.5, 1.5, 2.0), flip=True, variant="w", **params) -> MapFn:
    from wsss_ray.cams.infercam import InferCamConfig, infercam_maps
    cfg = InferCamConfig(**{k: v for k, v in params.items() if k in InferCamConfig.__dataclass_fields__})
    weight = model.cam_weight(variant).detach()

    def fn(images, classes, out_size, baselines=None):
        return infercam_maps(model.features, weight, images, classes, out_size, scales, flip, cfg, baselines)
    return fn


def advcam_map_fn(model, scales=(1.0, 0.5, 1.5, 2.0), flip=True, variant="w", normalise=True, **params) -> MapFn:
    from wsss_ray.cams.advcam import AdvCamConfig, advcam_maps
    cfg = AdvCamConfig(**{k: v for k, v in params.items() if k in AdvCamConfig.__dataclass_fields__})
    weight = model.cam_weight(variant).detach()
    model.eval()   # pairs climb independently only with eval-mode BatchNorm

    def fn(images, classes, out_size):
        return advcam_maps(model.features, weight, images, classes, out_size, scales, flip, cfg, normalise)
    return fn


MAP_METHODS = {"cam": cam_map_fn, "lpcam": lpcam_map_fn, "infercam": infercam_map_fn,
               "advcam": advcam_map_fn}
# methods whose fn also takes ``baselines=``: the CAM pass's stored maps of the same images
TAKES_BASELINES = {"infercam"}


def build_map_fn(kind: str, model, params: dict) -> MapFn:
    if kind not in MAP_METHODS:
        raise ValueError(f"unknown map method {kind!r}; known: {sorted(MAP_METHODS)}")
    return MAP_METHODS[kind](model, **params)
