"""LPCAM (METHODS.md section 2): maps from cosine similarity to per-class local prototypes.

``FG_n = mean_i cos(f, F_i)`` over class n's foreground prototypes, ``BG_n = mean_j cos(f, B_j)``
over its context prototypes, ``LPCAM_n = relu(FG_n - BG_n) / max``. All prototypes of all
classes sit in one matrix, so one matrix product per batch gives every similarity, and a
(C x M) averaging matrix per term turns them into per-class means.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import fuse_flips, normalise_per_map, scaled_batch, with_flips
from wsss_ray.clustering import CONTEXT, FG  # noqa: F401  re-exported: the prototype kinds, defined torch-free


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
    def from_table(cls, table, num_classes: int) -> "PrototypeBank":
        """From a prototypes Parquet table (selected rows: class_id, kind, vector)."""
        if table is None or table.num_rows == 0:
            raise ValueError("empty prototype set: run the prototype stage (no class has a prototype)")
        vectors = np.stack([np.asarray(v, np.float32) for v in table.column("vector").to_pylist()])
        return cls.from_arrays(vectors, table.column("class_id").to_pylist(), table.column("kind").to_pylist(),
                               num_classes)

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
                     scales=(1.0, 0.5, 1.5, 2.0), flip: bool = True, fg_only: bool = False) -> list:
    """LPCAM (or LPCAM-F) for each image's classes: flip fused at feature level
    (f(x) + flip(f(flip x))), FG - BG per scale, upsampled, mean over scales, relu, max-norm."""
    bank = bank.to(images.device)
    total = None
    for scale in scales:
        feats = fuse_flips(features_fn(with_flips(scaled_batch(images, scale), flip)), flip)
        fg, bg = lpcam_terms(feats, bank)
        diff = fg if fg_only else fg - bg
        diff = F.interpolate(diff, size=out_size, mode="bilinear", align_corners=False)
        total = diff if total is None else total + diff
    total = torch.relu(total / len(scales))
    return [normalise_per_map(total[i, list(cls)]) for i, cls in enumerate(classes)]


def class_scores(centres: np.ndarray, head_weight: np.ndarray) -> np.ndarray:
    """p = softmax over classes of (centre . W): (K, C)."""
    logits = torch.as_tensor(centres, dtype=torch.float64) @ torch.as_tensor(head_weight, dtype=torch.float64).T
    return torch.softmax(logits, dim=1).numpy()


def select_foreground(scores_n: np.ndarray, mu_f: float) -> tuple[np.ndarray, bool]:
    """Indices of centres with p[n] > mu_f; else the arg-max centre (never an empty set)."""
    chosen = np.flatnonzero(scores_n > mu_f)
    if len(chosen) == 0 and len(scores_n):
        return np.array([int(np.argmax(scores_n))]), True
    return chosen, False


def select_context(scores_n: np.ndarray, low: float, high: float) -> np.ndarray:
    """Indices of context centres with low < p[n] < high (may be empty: no context term)."""
    return np.flatnonzero((scores_n > low) & (scores_n < high))


def split_positions(features: torch.Tensor, cam: torch.Tensor, tau: float, cap: int = 0,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(D,h,w) features and one class's CAM -> (foreground rows CAM >= tau, context rows CAM < tau).

    The CAM is resampled to the feature grid by nearest neighbour; ``cap`` > 0 keeps at
    most that many positions of each kind (a seeded random subset).
    """
    d, h, w = features.shape
    cam = F.interpolate(cam[None, None].float(), size=(h, w), mode="nearest")[0, 0]
    rows = features.reshape(d, -1).T.float().cpu().numpy()
    fg_mask = (cam >= tau).reshape(-1).cpu().numpy()
    fg, ctx = rows[fg_mask], rows[~fg_mask]
    if cap and rng is not None:
        fg = fg[np.sort(rng.permutation(len(fg))[:cap])] if len(fg) > cap else fg
        ctx = ctx[np.sort(rng.permutation(len(ctx))[:cap])] if len(ctx) > cap else ctx
    return fg, ctx
