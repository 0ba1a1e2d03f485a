"""Fully connected CRF (Kraehenbuehl & Koltun 2011) by mean-field iterations in plain torch.

The IRN/ReCAM/LPCAM code calls pydensecrf (permutohedral lattice, C++). That binding no
longer builds with Cython 3, and neither ``SimpleCRF`` nor ``pydensecrf2`` ships a wheel for
this Python (both are sdists that need a C++ toolchain at install time), so this module
implements the same model in torch instead (docs/REFINEMENT.md).

Model: ``E(x) = sum_i U_i(x_i) + sum_{i,j} mu(x_i, x_j) sum_m w_m k_m(f_i, f_j)`` with Potts
``mu``, a Gaussian (smoothness) kernel on positions and a bilateral (appearance) kernel on
positions and colours. Mean field: ``Q <- softmax(-U + sum_m w_m * M_m(Q))`` where the
message ``M_m(Q)_i = sum_j k_m(i, j) Q_j / sum_j k_m(i, j)`` is the kernel-weighted average
of the current marginals (pydensecrf normalises its kernels too, symmetrically; a
normalised message keeps ``compat`` on the same scale whatever the image size).

Exactness:
- Gaussian kernel: exact (separable convolution, truncated at 4 sigma).
- Bilateral kernel: exact O(N^2) when the image has at most ``max_sources`` pixels. Larger
  images sum over a stride-s grid of *source* pixels (each standing for its s x s block)
  while every *target* pixel keeps its own position and colour: the spatial term varies
  over ``sxy`` = 50 px, so a grid with s << 50 is a fine quadrature of it, and the colour
  term is still evaluated per pixel, so labels still snap to colour edges. Memory is
  O(N * max_sources / chunks), time O(N * max_sources) per iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CRFParams:
    """The authors' settings (IRN ``imutils.crf_inference_label``) as defaults."""
    iterations: int = 10
    gt_prob: float = 0.7
    gauss_sxy: float = 3.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    max_sources: int = 1024           # bilateral sources; more pixels than this -> strided sources
    max_kernel_entries: int = 1 << 24  # cache the (N x sources) kernel below this size, else chunk


# ------------------------------------------------------------------ unaries


def unary_from_labels(labels: torch.Tensor, n_labels: int, gt_prob: float = 0.7,
                      unsure: int | None = None) -> torch.Tensor:
    """(L, H, W) energies -log p: the given label gets ``gt_prob``, the others share the rest.
    Pixels equal to ``unsure`` get a uniform distribution (no opinion)."""
    labels = torch.as_tensor(labels).long()
    rest = (1.0 - gt_prob) / max(n_labels - 1, 1)
    probs = torch.full((n_labels, *labels.shape), rest, dtype=torch.float32)
    known = labels != unsure if unsure is not None else torch.ones_like(labels, dtype=torch.bool)
    probs.scatter_(0, labels.clamp(0, n_labels - 1)[None], gt_prob)
    probs[:, ~known] = 1.0 / n_labels
    return -torch.log(probs)


def unary_from_probs(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return -torch.log(torch.as_tensor(probs, dtype=torch.float32).clamp_min(eps))


# ------------------------------------------------------------------ kernels


def _gaussian_1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(4 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return torch.exp(-0.5 * (x / sigma) ** 2)


def gaussian_message(q: torch.Tensor, sxy: float) -> torch.Tensor:
    """Kernel-weighted mean of q (L,H,W) under exp(-d^2 / 2 sxy^2): a separable blur divided by
    the blurred ones (so borders are averages over the pixels that exist)."""
    g = _gaussian_1d(sxy)
    r = (len(g) - 1) // 2

    def blur(x):
        x = F.conv2d(x[:, None], g.view(1, 1, 1, -1), padding=(0, r))
        return F.conv2d(x, g.view(1, 1, -1, 1), padding=(r, 0))[:, 0]

    return blur(q) / blur(torch.ones_like(q[:1]))


def _bilateral_features(image: torch.Tensor, sxy: float, srgb: float) -> torch.Tensor:
    """(N, 5) scaled features [y, x, r, g, b]; image (H, W, 3) float."""
    h, w = image.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    pos = torch.stack([ys, xs], -1).reshape(-1, 2) / sxy
    return torch.cat([pos, image.reshape(-1, 3).float() / srgb], 1)


def source_stride(num_pixels: int, max_sources: int) -> int:
    return max(1, int(math.ceil(math.sqrt(num_pixels / max(max_sources, 1)))))


def _source_indices(h: int, w: int, stride: int) -> torch.Tensor:
    """Flat indices of one pixel per stride x stride block (its centre, clipped to the image)."""
    off = stride // 2
    ys = torch.arange(off, h + off, stride).clamp(max=h - 1)
    xs = torch.arange(off, w + off, stride).clamp(max=w - 1)
    return (ys[:, None] * w + xs[None, :]).reshape(-1)


class BilateralMessage:
    """The bilateral message operator for one image, built once and applied every iteration."""

    def __init__(self, image: torch.Tensor, sxy: float, srgb: float, max_sources: int,
                 max_kernel_entries: int):
        h, w = image.shape[:2]
        self.feats = _bilateral_features(image, sxy, srgb)
        self.sources = _source_indices(h, w, source_stride(h * w, max_sources))
        n, m = h * w, len(self.sources)
        # rows of targets per chunk, so a chunk's kernel block stays within the entry budget
        self.chunk = max(1, min(n, max_kernel_entries // max(m, 1)))
        self.cached = self._kernel(0, n) if n * m <= max_kernel_entries else None

    def _kernel(self, start: int, stop: int) -> torch.Tensor:
        """Row-normalised kernel block (targets start:stop, all sources)."""
        d2 = torch.cdist(self.feats[start:stop], self.feats[self.sources]).pow_(2)
        k = torch.exp_(d2.mul_(-0.5))
        return k / k.sum(1, keepdim=True).clamp_min(1e-20)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        labels = q.shape[0]
        src = q.reshape(labels, -1)[:, self.sources].T          # (M, L)
        if self.cached is not None:
            out = self.cached @ src
        else:
            n = self.feats.shape[0]
            out = torch.cat([self._kernel(s, min(s + self.chunk, n)) @ src for s in range(0, n, self.chunk)])
        return out.T.reshape(q.shape)


# ------------------------------------------------------------------ inference


def _as_image(image) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if t.dim() != 3 or t.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got {tuple(t.shape)}")
    return t.float()


def dense_crf(image, unary: torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """Mean-field marginals Q (L, H, W) for an (H, W, 3) RGB image (0..255) and unary (L, H, W)."""
    image = _as_image(image)
    unary = torch.as_tensor(unary, dtype=torch.float32)
    if unary.shape[1:] != image.shape[:2]:
        raise ValueError(f"unary {tuple(unary.shape)} does not match image {tuple(image.shape)}")
    bilateral = BilateralMessage(image, params.bilateral_sxy, params.bilateral_srgb, params.max_sources,
                                 params.max_kernel_entries)
    q = torch.softmax(-unary, 0)
    for _ in range(params.iterations):
        # Potts: agreeing with the neighbours' marginals lowers a label's energy
        energy = -unary + params.gauss_compat * gaussian_message(q, params.gauss_sxy)
        energy = energy + params.bilateral_compat * bilateral(q)
        q = torch.softmax(energy, 0)
    return q


def crf_inference_label(image, labels, n_labels: int, params: CRFParams = CRFParams()) -> np.ndarray:
    """Labels (H, W) in 0..n_labels-1 -> CRF-refined labels (the IRN helper's contract)."""
    unary = unary_from_labels(torch.as_tensor(np.asarray(labels)), n_labels, params.gt_prob)
    with torch.no_grad():
        return dense_crf(image, unary, params).argmax(0).numpy().astype(np.int64)


def crf_inference_probs(image, probs, params: CRFParams = CRFParams()) -> np.ndarray:
    """Probabilities (L, H, W) -> refined marginals (L, H, W)."""
    with torch.no_grad():
        return dense_crf(image, unary_from_probs(torch.as_tensor(np.asarray(probs))), params).numpy()
