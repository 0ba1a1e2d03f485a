"""The map methods from Python, without Ray: load a finished run, compute maps of any images.

    from wsss_ray import load_run, CAM, LPCAM
    run = load_run("runs/demo")
    maps = CAM(run.model)(images, labels)          # one (len(labels[i]), H, W) array per image
    lp = LPCAM.fit(run.model, images, labels, tau=0.1, k=12)

Images are HxWx3 uint8 arrays, labels each image's class ids. The network sees them exactly as
the extraction stage feeds it (the checkpoint's mean / std, the run's scales, flip and max
side), and the maps come from the same functions (``cams.registry``), so at ``stride`` equal
to the run's store stride they are the maps ``maps/<method>`` holds, before its uint8 rounding.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import network_inputs, strided_size
from wsss_ray.cams.clustering import CONTEXT, FG, cluster_points
from wsss_ray.cams.lpcam import PrototypeBank, split_image
from wsss_ray.cams.prototypes import score_centres, select_prototypes
from wsss_ray.cams.registry import build_map_fn
from wsss_ray.config import CamConfig, LPCAMConfig, from_dict
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.models.classifier import Classifier
from wsss_ray.rundir import RunDir
from wsss_ray.store import decode_maps, encode_maps


@dataclass
class Model:
    """A trained classifier with the inference settings of the run that made it."""
    net: Classifier
    mean: tuple
    std: tuple
    scales: tuple = CamConfig.scales
    flip: bool = CamConfig.flip
    max_side: int = CamConfig.max_side
    store_stride: int = CamConfig.store_stride     # the grid LPCAM.fit splits features on
    batch_size: int = CamConfig.batch_size
    resample: str = CamConfig.resample             # "pil": each scale from the uint8 image (the authors')

    @classmethod
    def load(cls, checkpoint_dir: str, cam: CamConfig = CamConfig()) -> "Model":
        net, model_cfg, _ = load_classifier(checkpoint_dir)
        return cls(net, tuple(model_cfg.image_mean), tuple(model_cfg.image_std), tuple(cam.scales), cam.flip,
                   cam.max_side, cam.store_stride, cam.batch_size, cam.resample)

    @property
    def num_classes(self) -> int:
        return self.net.head.weight.shape[0]


@dataclass
class Run:
    """What a finished run directory holds for map making."""
    root: str
    model: Model                                   # checkpoints/cam
    class_names: tuple
    recam_model: Model | None = None               # checkpoints/recam, when the run trained one
    prototypes: list[dict] | None = None           # prototypes/lpcam.parquet rows, when present
    lpcam: LPCAMConfig = field(default_factory=LPCAMConfig)


def load_run(run_dir: str) -> Run:
    """The CAM (and ReCAM) classifier, class names and LPCAM prototypes of a run directory."""
    import pyarrow.parquet as pq
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.store import open_fs
    run = RunDir(run_dir)
    config = run.read_json(run.uri("config.json"))
    cam, lpcam = from_dict(CamConfig, config["cam"]), from_dict(LPCAMConfig, config["lpcam"])
    _, classes = read_manifest(run.manifest())
    recam_dir = run.checkpoint("recam")
    recam = Model.load(recam_dir, cam) if run.exists(f"{recam_dir}/model.pt") else None
    prototypes = None
    if run.exists(run.uri("prototypes", "lpcam.parquet")):
        fs, path = open_fs(run.uri("prototypes", "lpcam.parquet"))
        prototypes = pq.read_table(path, filesystem=fs).select(["class_id", "kind", "vector"]).to_pylist()
    return Run(run.root, Model.load(run.checkpoint("cam"), cam), tuple(classes.names), recam, prototypes, lpcam)


# ----------------------------------------------------------------------------- preprocessing

def limit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the long side is at most ``max_side`` (as ``data.images.load_rgb`` does)."""
    h, w = image.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return image
    from PIL import Image
    from wsss_ray.data.images import _target_size
    small = Image.fromarray(image).resize(_target_size(w, h, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return np.asarray(small, np.uint8)


def shape_batches(images: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of same-size images (a batch shares H, W), in input order, cut to ``batch_size``."""
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape[:2], []).append(i)
    return [ids[j:j + batch_size] for ids in groups.values() for j in range(0, len(ids), max(1, batch_size))]


def as_batch(model: Model, images: Sequence[np.ndarray], device) -> torch.Tensor:
    """uint8 images -> the normalised (N,3,H,W) input the extraction stage builds."""
    return network_inputs(images, model.mean, model.std, (1.0,), "torch", device)


def to_grid(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(c,h,w) maps resized bilinearly to ``size`` (only where a max side shrank the input)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if maps.shape[0] == 0:
        return maps.new_zeros(0, *size)
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]


def check_inputs(images, labels, num_classes: int) -> None:
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label lists")
    for i, (im, lab) in enumerate(zip(images, labels)):
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an HxWx3 uint8 array, got {im.dtype} {im.shape}")
        bad = [c for c in lab if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"image {i}: class ids {bad} outside 0..{num_classes - 1}")


# ----------------------------------------------------------------------------- methods

class MapMethod:
    """``method(images, labels)`` -> one (len(labels[i]), H/stride, W/stride) float32 array per
    image: every class of an image in one call, same-size images batched together."""
    kind = "cam"
    params: dict = {}

    def __init__(self, model: Model, *, device=None, normalise: bool = True, stride: int = 1, **params):
        self.model, self.normalise, self.stride = model, normalise, stride
        self.device = torch.device(device or "cpu")
        model.net.to(self.device).eval()
        self.params = dict(self.params, **params)

    def map_fn(self):
        params = dict(self.params, scales=tuple(self.model.scales), flip=self.model.flip, normalise=self.normalise)
        return build_map_fn(self.kind, self.model.net, params)

    def __call__(self, images: Sequence[np.ndarray], labels: Sequence[Sequence[int]]) -> list[np.ndarray]:
        images = [np.asarray(im) for im in images]
        check_inputs(images, labels, self.model.num_classes)
        return [m.float().cpu().numpy() for m in self.tensors(images, [list(map(int, lab)) for lab in labels])]

    def tensors(self, images: list[np.ndarray], labels: list[list[int]]) -> list[torch.Tensor]:
        fn, out = self.map_fn(), [None] * len(images)
        inputs = [limit_side(im, self.model.max_side) for im in images]
        with torch.no_grad():         # as the stage calls map fns; AdvCAM re-enables what it needs
            for batch in shape_batches(inputs, self.model.batch_size):
                h, w = inputs[batch[0]].shape[:2]
                x = network_inputs([inputs[i] for i in batch], self.model.mean, self.model.std, self.model.scales,
                                   self.model.resample, self.device)
                maps = fn(x, [labels[i] for i in batch],
                          strided_size(h, w, self.stride))
                for i, m in zip(batch, maps):
                    out[i] = to_grid(m, strided_size(*images[i].shape[:2], self.stride))
        return out


class CAM(MapMethod):
    """Multi-scale CAM with the classifier head ``w`` (or another ``variant`` of the weight)."""
    kind = "cam"

    def __init__(self, model: Model, *, variant: str = "w", **kwargs):
        super().__init__(model, variant=variant, **kwargs)


class ReCAM(CAM):
    """CAM of the ReCAM checkpoint with the ``w*w'`` weight (the pipeline's ``recam``): pass
    ``run.recam_model``, or the run itself."""

    def __init__(self, model, *, variant: str = "w*w'", **kwargs):
        if isinstance(model, Run):
            if model.recam_model is None:
                raise ValueError(f"{model.root} has no ReCAM checkpoint (run the pipeline with recam)")
            model = model.recam_model
        super().__init__(model, variant=variant, **kwargs)


def check_settings(settings: dict, config_cls) -> None:
    """The map functions ignore unknown keys; a caller's typo should not pass silently."""
    unknown = set(settings) - set(config_cls.__dataclass_fields__) - {"variant"}
    if unknown:
        raise TypeError(f"unknown {config_cls.__name__} settings {sorted(unknown)}")


class InferCam(MapMethod):
    """InferCam; keyword arguments override ``cams.infercam.InferCamConfig`` (split, iterate, ...)."""
    kind = "infercam"

    def __init__(self, model: Model, *, device=None, normalise: bool = True, stride: int = 1, **settings):
        from wsss_ray.cams.infercam import InferCamConfig
        if not normalise:
            raise ValueError("InferCam unites max-normalised patch maps: it has no raw maps")
        check_settings(settings, InferCamConfig)
        super().__init__(model, device=device, stride=stride, **settings)


class AdvCAM(MapMethod):
    """AdvCAM; keyword arguments override ``cams.advcam.AdvCamConfig`` (steps, step_size, ...)."""
    kind = "advcam"

    def __init__(self, model: Model, *, device=None, normalise: bool = True, stride: int = 1, **settings):
        from wsss_ray.cams.advcam import AdvCamConfig
        check_settings(settings, AdvCamConfig)
        super().__init__(model, device=device, normalise=normalise, stride=stride, **settings)


class LPCAM(MapMethod):
    """LPCAM from prototypes (``run.prototypes``, rows or a ``PrototypeBank``), or fitted with
    ``LPCAM.fit``; ``fg_only=True`` is LPCAM-F."""
    kind = "lpcam"

    def __init__(self, model: Model, prototypes, *, fg_only: bool = False, **kwargs):
        if prototypes is None:
            raise ValueError("no prototypes: pass run.prototypes, or use LPCAM.fit")
        self.prototypes = prototypes
        self.bank = prototypes if isinstance(prototypes, PrototypeBank) else \
            PrototypeBank.from_rows(list(prototypes), model.num_classes)
        super().__init__(model, fg_only=fg_only, **kwargs)

    def map_fn(self):
        params = dict(self.params, prototypes=self.bank, scales=tuple(self.model.scales), flip=self.model.flip,
                      normalise=self.normalise)
        return build_map_fn(self.kind, self.model.net, params)

    @classmethod
    def fit(cls, model: Model, images: Sequence[np.ndarray], labels: Sequence[Sequence[int]], *,
            device=None, fg_only: bool = False, normalise: bool = True, stride: int = 1, **knobs) -> "LPCAM":
        """Prototypes from these images as the prototype stage makes them: each image's scale-1
        features split at ``tau`` by its CAM (on the run's store grid, at storage precision),
        per-class spherical k-means, centres scored by the head and kept by mu_f / mu_b.
        ``knobs``: ``LPCAMConfig`` fields (tau, k, mu_f, mu_b_low, mu_b_high, ...)."""
        cfg = dataclasses.replace(LPCAMConfig(images_per_class=0), **knobs)
        lab = [list(map(int, x)) for x in labels]
        images = [limit_side(np.asarray(im), model.max_side) for im in images]
        check_inputs(images, lab, model.num_classes)
        cams = CAM(model, device=device, stride=model.store_stride).tensors(images, lab)
        per_class = sampled_points(model, images, lab, cams, cfg, torch.device(device or "cpu"))
        head = model.net.head.weight.detach().flatten(1).cpu().numpy()
        centres = score_centres(cluster_points(per_class, model.num_classes, head.shape[1], cfg), head)
        chosen, _ = select_prototypes(centres, model.num_classes, cfg)
        return cls(model, chosen, fg_only=fg_only, device=device, normalise=normalise, stride=stride)


def sampled_points(model: Model, images: list[np.ndarray], labels: list[list[int]], cams: list[torch.Tensor],
                   cfg: LPCAMConfig, device) -> dict[int, dict]:
    """Class -> {fg, context} feature rows of every image for each of its labels, split by its
    CAM read back at storage precision (as the stage splits by the stored maps)."""
    per_class: dict[int, dict] = {}
    with torch.no_grad():
        for batch in shape_batches(images, model.batch_size):
            feats = model.net.features(as_batch(model, [images[i] for i in batch], device))
            for i, f in zip(batch, feats):
                stored = torch.from_numpy(decode_maps(encode_maps(cams[i].cpu().numpy()), cams[i].shape))
                for c, fg, ctx in split_image(i, f, labels[i], stored, labels[i], cfg):
                    bucket = per_class.setdefault(c, {FG: [], CONTEXT: []})
                    bucket[FG].append(fg)
                    bucket[CONTEXT].append(ctx)
    return per_class
