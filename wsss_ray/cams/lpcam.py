"""LPCAM (METHODS.md section 2): the foreground/context split of an image's features, and maps
from cosine similarity to per-class local prototypes (clustered in ``cams.clustering``,
selected in ``cams.prototypes``).

``FG_n = mean_i cos(f, F_i)`` over class n's foreground prototypes, ``BG_n = mean_j cos(f, B_j)``
over its context prototypes. As the authors' ``make_lpcam`` computes it: per scale
``relu(FG_n - BG_n)`` (``FG_n`` alone, without ReLU, for a class with no context prototype),
upsampled, mean over scales, divided by its max. All prototypes of all
classes sit in one matrix, so one matrix product per batch gives every similarity, and a
(C x M) averaging matrix per term turns them into per-class means.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import base_batch, fuse_flips, scaled_batch, select_classes, upsample_maps, with_flips
from wsss_ray.cams.clustering import CONTEXT, FG  # noqa: F401  re-exported: the prototype kinds, defined torch-free


@dataclass
class PrototypeBank:
    vectors: torch.Tensor      # (M, D), L2-normalised
    fg_avg: torch.Tensor       # (C, M): row n averages class n's foreground prototypes
    bg_avg: torch.Tensor       # (C, M): row n averages class n's context prototypes (zeros: none)

    @classmethod
    def from_arrays(cls, vectors: np.ndarray, class_ids, kinds, num_classes: int) -> "PrototypeBank":
        vectors = torch.as_tensor(np.asarray(vectors, np.float32))
        m = vectors.shape[0]
        fg_avg, bg_avg = torch.zeros(num_classes, m), torch.zeros(num_classes, m)
        for j, (c, kind) in enumerate(zip(class_ids, kinds)):
            (fg_avg if kind == FG else bg_avg)[int(c), j] = 1.0
        for avg in (fg_avg, bg_avg):
            avg /= avg.sum(1, keepdim=True).clamp(min=1.0)
        return cls(F.normalize(vectors, dim=1) if m else vectors, fg_avg, bg_avg)

    @classmethod
    def from_rows(cls, rows: list[dict], num_classes: int) -> "PrototypeBank":
        """From selected prototype rows (class_id, kind, vector), as ``cams.prototypes`` selects them."""
        if not rows:
            raise ValueError("empty prototype set: run the prototype stage (no class has a prototype)")
        vectors = np.stack([np.asarray(r["vector"], np.float32) for r in rows])
        return cls.from_arrays(vectors, [r["class_id"] for r in rows], [r["kind"] for r in rows], num_classes)

    @classmethod
    def from_table(cls, table, num_classes: int) -> "PrototypeBank":
        """From a prototypes Parquet table (selected rows: class_id, kind, vector)."""
        if table is None:
            return cls.from_rows([], num_classes)
        return cls.from_rows(table.select(["class_id", "kind", "vector"]).to_pylist(), num_classes)

    def to(self, device) -> "PrototypeBank":
        return PrototypeBank(self.vectors.to(device), self.fg_avg.to(device), self.bg_avg.to(device))


def lpcam_terms(features: torch.Tensor, bank: PrototypeBank) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,D,h,w) features -> (FG, BG), each (N,C,h,w): per-class mean cosine similarities."""
    n, d, h, w = features.shape
    unit = F.normalize(features.flatten(2), dim=1)                              # (N,D,hw)
    cos = torch.einsum("md,ndp->nmp", bank.vectors.to(unit.dtype), unit)         # (N,M,hw): one matmul
    fg = torch.einsum("cm,nmp->ncp", bank.fg_avg.to(unit.dtype), cos).reshape(n, -1, h, w)
    bg = torch.einsum("cm,nmp->ncp", bank.bg_avg.to(unit.dtype), cos).reshape(n, -1, h, w)
    return fg, bg


def multiscale_lpcam(features_fn, bank: PrototypeBank, images: torch.Tensor, classes, out_size,
                     scales=(1.0, 0.5, 1.5, 2.0), flip: bool = True, fg_only: bool = False,
                     normalise: bool = True) -> list:
    """LPCAM (or LPCAM-F) for each image's classes: flip fused at feature level
    (f(x) + flip(f(flip x))), then ``lpcam_from_features``."""
    per_scale = (fuse_flips(features_fn(with_flips(scaled_batch(images, s), flip)), flip) for s in scales)
    return lpcam_from_features(per_scale, bank.to(images.device), classes, out_size, fg_only, normalise,
                               image_size=base_batch(images).shape[-2:])


def lpcam_from_features(per_scale, bank: PrototypeBank, classes, out_size, fg_only: bool = False,
                        normalise: bool = True, image_size=None) -> list:
    """Flip-fused (N,D,h,w) features, one batch per scale (any iterable, consumed one scale at a
    time) -> each image's class maps: ``scale_term`` upsampled, mean over scales, divided by the
    max (``normalise=False``: before that division). ``image_size``: the scale-1.0 input's, for
    ``upsample_maps``' full-resolution rule (None: straight to ``out_size``)."""
    total, count = None, 0
    for feats in per_scale:
        term = upsample_maps(scale_term(*lpcam_terms(feats, bank), bank, fg_only), out_size, image_size)
        total = term if total is None else total + term
        count += 1
    picked = select_classes(total / count, classes)
    return [divide_by_max(m) for m in picked] if normalise else picked


def scale_term(fg: torch.Tensor, bg: torch.Tensor, bank: PrototypeBank, fg_only: bool) -> torch.Tensor:
    """One scale's (N,C,h,w) map: relu(FG - BG) for classes with context prototypes, FG itself
    for the others and for LPCAM-F (the authors apply the ReLU only to the difference)."""
    if fg_only:
        return fg
    has_context = (bank.bg_avg.sum(1) > 0).to(fg.device)[None, :, None, None]
    return torch.where(has_context, torch.relu(fg - bg), fg)


def divide_by_max(maps: torch.Tensor) -> torch.Tensor:
    """Each (..., h, w) map over its own max, as the authors divide (no epsilon); a map whose
    max is not positive becomes zeros (theirs would be inf or NaN)."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def cam_on_feature_grid(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) CAMs resampled to the (h, w) feature grid by nearest neighbour."""
    x = cams.float()
    grid = F.interpolate(x.reshape(1, -1, *x.shape[-2:]), size=tuple(size), mode="nearest")
    return grid.reshape(*x.shape[:-2], *size)


def split_positions(features: torch.Tensor, cam: torch.Tensor, tau: float, cap: int = 0,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(D,h,w) features and one class's CAM -> (foreground rows CAM >= tau, context rows CAM < tau).

    The CAM is resampled to the feature grid by nearest neighbour; ``cap`` > 0 keeps at
    most that many positions of each kind (a seeded random subset).
    """
    d, h, w = features.shape
    cam = cam_on_feature_grid(cam, (h, w))
    rows = features.reshape(d, -1).T.float().cpu().numpy()
    fg_mask = (cam >= tau).reshape(-1).cpu().numpy()
    fg, ctx = rows[fg_mask], rows[~fg_mask]
    if cap and rng is not None:
        fg = fg[np.sort(rng.permutation(len(fg))[:cap])] if len(fg) > cap else fg
        ctx = ctx[np.sort(rng.permutation(len(ctx))[:cap])] if len(ctx) > cap else ctx
    return fg, ctx


def split_image(image_id: int, features: torch.Tensor, cam_classes, cams: torch.Tensor, sample_classes,
                cfg) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """One image's (class, foreground rows, context rows) for each class it is sampled for: its
    (D,h,w) scale-1.0 features split by that class's CAM at ``cfg.tau``; the position cap
    draws from a generator seeded by (seed, image, class), so any caller takes the same rows."""
    out = []
    for c in sample_classes:
        rng = np.random.default_rng([cfg.seed, image_id, c])
        fg, ctx = split_positions(features, cams[list(cam_classes).index(c)], cfg.tau,
                                  cfg.max_positions_per_image, rng)
        out.append((c, fg, ctx))
    return out
