"""IRN's refinement (CVPR 2019): confident labels from seeds, the inter-pixel relation
network on the frozen classifier (boundary and displacement branches, trained together on
IRN's two losses), and the random-walk pseudo mask. Pure torch; the stage
(wsss_ray/stages/refine.py) adds Ray around it.

Label convention everywhere: 0 background, class id + 1 foreground, 255 ignore.
The displacement field is trained and stored; the semantic pseudo mask uses the boundary
only, as in IRN. IRN's instance masks (centroids from the field) are not built.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsss_ray.refine.crf import CRFParams, crf_inference_label
from wsss_ray.refine.random_walk import half_offsets, path_max, propagate, shift

IGNORE = 255

# (conf_fg, conf_bg) the authors publish (METHODS.md section 4); variants follow their base
CONF_PRESETS = {"cam": (0.30, 0.05), "recam": (0.35, 0.10), "lpcam": (0.45, 0.25)}
_BASE = {"lpcam_f": "lpcam", "infercam": "cam", "advcam": "recam", "recam_advcam": "recam"}


def conf_thresholds(method: str) -> tuple[float, float]:
    """Preset (conf_fg, conf_bg) for a map name; ReCAM variants use ReCAM's, unknown ones CAM's."""
    base = _BASE.get(method) or ("recam" if method.startswith("recam") else method)
    return CONF_PRESETS.get(base, CONF_PRESETS["cam"])


# ------------------------------------------------------------------ confident labels


def keys_of(classes) -> np.ndarray:
    """Label of each map plane after a background plane is prepended: [0, id_1 + 1, ...]."""
    return np.concatenate([[0], np.asarray(classes, np.int64) + 1]).astype(np.int64)


def threshold_labels(maps: np.ndarray, threshold: float) -> np.ndarray:
    """argmax over [threshold, map_1, ...]: plane indices (0 = background), ties to background."""
    planes = np.concatenate([np.full((1, *maps.shape[1:]), threshold, np.float32), maps.astype(np.float32)])
    return planes.argmax(0)


def confident_labels(image: np.ndarray, maps: np.ndarray, classes, conf_fg: float, conf_bg: float,
                     crf: CRFParams = CRFParams()) -> np.ndarray:
    """IRN's ``cam_to_ir_label``: foreground where the CRF of the conf_fg seed says a class,
    background where the CRFs of both seeds say background, ignore (255) elsewhere.

    image (H, W, 3) uint8; maps (c, H, W) full-resolution maps of ``classes``."""
    keys = keys_of(classes)
    fg = keys[crf_inference_label(image, threshold_labels(maps, conf_fg), len(keys), crf)]
    bg = keys[crf_inference_label(image, threshold_labels(maps, conf_bg), len(keys), crf)]
    out = np.where(fg > 0, fg, IGNORE)
    out[(fg == 0) & (bg == 0)] = 0
    return out.astype(np.uint8)


def crf_pseudo_mask(image: np.ndarray, maps: np.ndarray, classes, threshold: float,
                    crf: CRFParams = CRFParams()) -> np.ndarray:
    """The CRF-only refinement: seed mask at ``threshold``, then the dense CRF."""
    keys = keys_of(classes)
    return keys[crf_inference_label(image, threshold_labels(maps, threshold), len(keys), crf)].astype(np.uint8)


# ------------------------------------------------------------------ boundary network


def tap_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules whose outputs feed the boundary head: every stage of the backbone
    (IRN taps all five ResNet stages), or just the backbone when its stages are unknown."""
    if isinstance(getattr(backbone, "features", None), nn.Sequential):
        return list(backbone.features)
    if all(hasattr(backbone, n) for n in ("relu", "layer1", "layer2", "layer3", "layer4")):
        return [backbone.relu, backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    return [backbone]


class BoundaryNet(nn.Module):
    """IRN's two branches on a frozen backbone: each tapped stage -> 1x1 conv (16 ch), resized
    to the output stride; a two-layer stem on the image adds colour edges the frozen stages
    may have pooled away; a 3x3 + 1x1 fuse gives boundary logits. The displacement branch
    has its own 1x1 reductions of the same taps and its own 3x3 + 1x1 (2 channels: dy, dx in
    output-grid cells, from a cell to its instance's centroid): as in IRN, the two branches
    share only the frozen backbone, so the displacement loss never moves the boundary.

    ``stride`` is the output (and random-walk) grid: IRN's 4, or 2 / 1 for small images
    (the 112 px demo world: at stride 4 its objects span a handful of cells)."""

    def __init__(self, backbone: nn.Module, width: int = 16, stride: int = 4):
        super().__init__()
        if stride not in (1, 2, 4):
            raise ValueError(f"boundary stride must be 1, 2 or 4, got {stride}")
        self.stride = stride
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.taps = tap_modules(backbone)
        dims = [f.shape[1] for f in self._tapped(torch.zeros(1, 3, 64, 64))]
        self.reduce = nn.ModuleList(nn.Sequential(nn.Conv2d(d, width, 1), nn.ReLU(inplace=True)) for d in dims)
        s1, s2 = min(stride, 2), max(stride // 2, 1)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, s1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, s2, 1), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(nn.Conv2d(width * (len(dims) + 1), 2 * width, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(2 * width, 1, 1))
        self.reduce_dp = nn.ModuleList(nn.Sequential(nn.Conv2d(d, width, 1), nn.ReLU(inplace=True)) for d in dims)
        self.displace = nn.Sequential(nn.Conv2d(width * len(dims), 2 * width, 3, 1, 1), nn.ReLU(inplace=True),
                                      nn.Conv2d(2 * width, 2, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()            # frozen: BN statistics stay as trained
        return self

    def _tapped(self, images: torch.Tensor) -> list[torch.Tensor]:
        outs, hooks = [], [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in self.taps]
        try:
            with torch.no_grad():
                self.backbone.eval()(images)
        finally:
            for h in hooks:
                h.remove()
        return outs

    def forward(self, images: torch.Tensor, with_displacement: bool = False):
        """Boundary logits (N, 1, ceil(H/stride), ceil(W/stride)); with ``with_displacement``
        also the displacement field (N, 2, same size). One call returns both so that DDP
        sees every trained parameter in its forward."""
        size = (-(-images.shape[2] // self.stride), -(-images.shape[3] // self.stride))
        taps = self._tapped(images)
        parts = [F.interpolate(r(f), size=size, mode="bilinear", align_corners=False) for r, f in zip(self.reduce, taps)]
        parts.append(F.interpolate(self.stem(images), size=size, mode="bilinear", align_corners=False))
        boundary = self.fuse(torch.cat(parts, 1))
        if not with_displacement:
            return boundary
        dp = [F.interpolate(r(f), size=size, mode="bilinear", align_corners=False) for r, f in zip(self.reduce_dp, taps)]
        return boundary, self.displace(torch.cat(dp, 1))

    def head_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}


def infer_boundary(net: BoundaryNet, image: torch.Tensor) -> torch.Tensor:
    """Boundary probability (h, w) of one normalised image (3, H, W), averaged with its flip."""
    x = torch.stack([image, image.flip(-1)])
    prob = torch.sigmoid(net(x))[:, 0]
    return (prob[0] + prob[1].flip(-1)) / 2


# ------------------------------------------------------------------ affinity loss


def downsample_labels(labels: np.ndarray, stride: int = 4) -> np.ndarray:
    """Nearest-neighbour labels at ceil(H/stride) x ceil(W/stride) (IRN rescales by 0.25, order 0)."""
    t = torch.from_numpy(labels.astype(np.int64))[None, None].float()
    size = (-(-labels.shape[0] // stride), -(-labels.shape[1] // stride))
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy().astype(np.uint8)


def pair_labels(labels: torch.Tensor, offsets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fg_pos, bg_pos, neg) masks (K, N, h, w) for the pairs (p, p + o_k) of labels (N, h, w)."""
    a = labels.long()
    b = torch.stack([shift(a, dy, dx, IGNORE) for dy, dx in offsets])
    valid = (a != IGNORE) & (b != IGNORE)
    same = valid & (a == b)
    return same & (a > 0), same & (a == 0), valid & (a != b)


def affinity_loss(boundary_logits: torch.Tensor, labels: torch.Tensor, radius: int = 10) -> tuple[torch.Tensor, dict]:
    """IRN's affinity loss: -log a on same-label pairs (fg and bg halves weighted equally),
    -log(1 - a) on different-label pairs, a = 1 - max boundary on the segment.

    boundary_logits (N, 1, h, w); labels (N, h, w) at the same size (255 ignored)."""
    offsets = half_offsets(radius)
    aff = 1.0 - path_max(torch.sigmoid(boundary_logits[:, 0]), offsets)     # (K, N, h, w)
    fg_pos, bg_pos, neg = pair_labels(labels, offsets)

    def mean_over(mask, values):
        mask = mask.to(values.dtype)
        return (mask * values).sum() / (mask.sum() + 1e-5)

    pos_loss = -torch.log(aff + 1e-5)
    neg_loss = -torch.log(1.0 + 1e-5 - aff)
    fg, bg, ng = mean_over(fg_pos, pos_loss), mean_over(bg_pos, pos_loss), mean_over(neg, neg_loss)
    total = (fg / 2 + bg / 2 + ng) / 2
    return total, {"fg_pos": float(fg.detach()), "bg_pos": float(bg.detach()), "neg": float(ng.detach())}


def displacement_loss(displacement: torch.Tensor, labels: torch.Tensor, radius: int = 10) -> tuple[torch.Tensor, dict]:
    """IRN's displacement loss. The field D points from each cell to its instance's centroid,
    so for two cells p and p + o of one foreground region D(p) - D(p + o) = o; background
    cells share one (zero) displacement, so there D(p) - D(p + o) = 0. L1 on both, the
    foreground and background halves weighted equally.

    displacement (N, 2, h, w) in grid cells (dy, dx); labels (N, h, w) at the same size."""
    offsets = half_offsets(radius)
    fg_pos, bg_pos, _ = pair_labels(labels, offsets)
    diff = torch.stack([displacement - shift(displacement, dy, dx, 0.0) for dy, dx in offsets])   # (K, N, 2, h, w)
    target = torch.tensor(offsets, dtype=displacement.dtype, device=displacement.device)[:, None, :, None, None]
    fg_err = (diff - target).abs().sum(2)             # (K, N, h, w)
    bg_err = diff.abs().sum(2)

    def mean_over(mask, values):
        mask = mask.to(values.dtype)
        return (mask * values).sum() / (mask.sum() + 1e-5)

    fg, bg = mean_over(fg_pos, fg_err), mean_over(bg_pos, bg_err)
    return (fg + bg) / 2, {"dp_fg": float(fg.detach()), "dp_bg": float(bg.detach())}


def irn_loss(boundary_logits: torch.Tensor, displacement: torch.Tensor, labels: torch.Tensor,
             radius: int = 10) -> tuple[torch.Tensor, dict]:
    """IRN's training objective: the affinity loss plus the displacement loss."""
    aff, aff_parts = affinity_loss(boundary_logits, labels, radius)
    dp, dp_parts = displacement_loss(displacement, labels, radius)
    return aff + dp, {**aff_parts, **dp_parts}


# ------------------------------------------------------------------ random-walk pseudo mask


@dataclass(frozen=True)
class WalkParams:
    radius: int = 5                   # IRN propagates within radius 5 at stride 4
    beta: float = 10.0
    exp_times: int = 8                # 2^8 steps
    bg_threshold: float = 0.25        # IRN's sem_seg_bg_thres
    cam_power: float = 1.0            # AdvCAM's IRN step raises maps to 1.5


def rw_pseudo_mask(maps: torch.Tensor, boundary: torch.Tensor, classes, height: int, width: int,
                   params: WalkParams = WalkParams()) -> np.ndarray:
    """Strided maps (c, h', w') of ``classes`` + boundary (h, w) -> label mask (H, W) uint8.
    The walk runs on the boundary's grid (maps resized to it bilinearly when they differ)."""
    keys = keys_of(classes)
    if maps.shape[0] == 0:
        return np.zeros((height, width), np.uint8)
    if maps.shape[1:] != boundary.shape:
        maps = F.interpolate(maps[None].float(), size=boundary.shape, mode="bilinear", align_corners=False)[0]
    rw = propagate(maps.float().pow(params.cam_power), boundary.float(), params.radius, params.beta,
                   params.exp_times)
    scale = max(-(-height // maps.shape[1]), -(-width // maps.shape[2]))   # the map stride (IRN: x4, crop)
    up = F.interpolate(rw[None], scale_factor=scale, mode="bilinear", align_corners=False)[0, :, :height, :width]
    up = up / up.max().clamp_min(1e-5)                   # one max over all classes, as IRN
    planes = torch.cat([torch.full((1, height, width), params.bg_threshold), up])
    return keys[planes.argmax(0).numpy()].astype(np.uint8)
