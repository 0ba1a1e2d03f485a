"""Inter-pixel affinities from a boundary map, and IRN's random walk on them.

IRN (CVPR 2019) builds the affinity of two pixels within ``radius`` as
``a_ij = 1 - max_{k on the segment ij} B_k``, raises it to ``beta``, normalises the columns
into a transition matrix T, squares T ``exp_times`` times and propagates the seeds once:
``x T^(2^exp_times)``. The dense N x N matrix is what needed 24 GB GPUs.

Here T is kept sparse: only pairs within ``radius`` exist (about pi * r^2 per pixel), and
the walk applies T ``2^exp_times`` times to the L seed channels instead of squaring T
(squaring a local operator makes it dense). Memory is O(N * r^2): linear in pixels.
``random_walk_dense`` is the squaring reference for small images.

Layout: an affinity field is (K, H, W) for K pixel offsets: ``aff[k, y, x]`` is the
affinity between (y, x) and (y + dy_k, x + dx_k), 0 where the partner is outside.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def half_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets with 0 < |o| < radius, one of each +-o pair (each unordered pair once)."""
    out = []
    for dy in range(0, radius):
        for dx in range(-radius + 1, radius):
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius:
                out.append((dy, dx))
    return out


def full_offsets(radius: int) -> list[tuple[int, int]]:
    """Self, every half offset, then their negatives (same order)."""
    half = half_offsets(radius)
    return [(0, 0), *half, *[(-dy, -dx) for dy, dx in half]]


def shift(field: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """out[..., y, x] = field[..., y + dy, x + dx] (``fill`` outside)."""
    h, w = field.shape[-2:]
    out = torch.full_like(field, fill)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., yd, xd] = field[..., ys, xs]
    return out


def _segment_steps(dy: int, dx: int) -> list[tuple[int, int]]:
    """Integer points from (0, 0) to (dy, dx) inclusive, one per unit of the longer axis."""
    n = max(abs(dy), abs(dx))
    return sorted({(int(round(s * dy / n)), int(round(s * dx / n))) for s in range(n + 1)})


def path_max(boundary: torch.Tensor, offsets) -> torch.Tensor:
    """(K, ..., H, W): max of ``boundary`` along each segment (1 where it leaves the image).
    Differentiable in ``boundary`` (the boundary head trains through it)."""
    out = []
    for dy, dx in offsets:
        steps = [shift(boundary, sy, sx, 1.0) for sy, sx in _segment_steps(dy, dx)]
        out.append(torch.stack(steps).amax(0))
    return torch.stack(out)


def affinity_field(boundary: torch.Tensor, radius: int) -> tuple[list, torch.Tensor]:
    """Symmetric affinities (K, H, W) over ``full_offsets(radius)`` from a boundary map (H, W).

    Half the offsets are computed; the opposite offset is the same pair seen from the other
    end, so it is a shift of the first (exact symmetry, whatever the segment rounding)."""
    half = half_offsets(radius)
    aff_half = 1.0 - path_max(boundary, half) if half else boundary.new_zeros((0, *boundary.shape))
    back = [shift(a, -dy, -dx, 0.0) for a, (dy, dx) in zip(aff_half, half)]
    self_aff = torch.ones_like(boundary)[None]          # IRN adds the identity with weight 1
    field = torch.cat([self_aff, aff_half, torch.stack(back) if back else aff_half])
    return full_offsets(radius), field


def _pairs(offsets, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k, j, i) for every in-image pair: offset index, pixel j, partner i = j + o_k."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ks, js, is_ = [], [], []
    for k, (dy, dx) in enumerate(offsets):
        y2, x2 = ys + dy, xs + dx
        ok = (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
        ks.append(torch.full((int(ok.sum()),), k, device=device))
        js.append((ys * w + xs)[ok])
        is_.append((y2 * w + x2)[ok])
    return torch.cat(ks), torch.cat(js), torch.cat(is_)


def transition_sparse(field: torch.Tensor, offsets, beta: float) -> torch.Tensor:
    """T^T as a sparse CSR (N, N): row j holds T_ij = a_ij^beta / sum_i a_ij^beta over the
    neighbours i = j + o_k of j, so ``T^T @ x`` is one step of ``x T`` (column-normalised,
    as IRN). Built straight from the (K, H, W) field: offsets sorted by (dy, dx) give each
    row's columns in increasing order, so no COO sort is needed (int32 indices)."""
    _, h, w = field.shape
    order = sorted(range(len(offsets)), key=lambda k: offsets[k])
    ys = torch.arange(h, device=field.device)[:, None]
    xs = torch.arange(w, device=field.device)[None, :]
    valid = torch.stack([((ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w))
                         for dy, dx in (offsets[k] for k in order)])                      # (K, H, W)
    vals = field[order].pow(beta) * valid
    vals = vals / vals.sum(0, keepdim=True).clamp_min(1e-20)
    valid, vals = valid.flatten(1).T, vals.flatten(1).T                                    # (N, K), row j
    linear = torch.tensor([offsets[k][0] * w + offsets[k][1] for k in order], dtype=torch.int32,
                          device=field.device)
    cols = torch.arange(h * w, dtype=torch.int32, device=field.device)[:, None] + linear[None, :]
    crow = torch.zeros(h * w + 1, dtype=torch.int32, device=field.device)
    crow[1:] = valid.sum(1).cumsum(0)
    with warnings.catch_warnings():      # "CSR support is in beta": CSR SpMM is what we want
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols[valid], vals[valid], (h * w, h * w), check_invariants=False)


def transition_dense(field: torch.Tensor, offsets, beta: float) -> torch.Tensor:
    """The dense reference T (N, N), columns summing to 1 (small images only)."""
    _, h, w = field.shape
    k, j, i = _pairs(offsets, h, w, field.device)
    a = torch.zeros(h * w, h * w, dtype=field.dtype, device=field.device)
    a[i, j] = field[k, j // w, j % w].pow(beta)
    return a / a.sum(0, keepdim=True).clamp_min(1e-20)


def random_walk(seeds: torch.Tensor, field: torch.Tensor, offsets, beta: float = 10.0,
                exp_times: int = 8) -> torch.Tensor:
    """``seeds (L, H, W) @ T^(2^exp_times)`` by 2^exp_times sparse steps."""
    l, h, w = seeds.shape
    tt = transition_sparse(field.to(seeds.dtype), offsets, beta)
    x = seeds.reshape(l, h * w).T.contiguous()             # (N, L): each step is one SpMM
    for _ in range(2 ** exp_times):
        x = torch.sparse.mm(tt, x)
    return x.T.reshape(l, h, w)


def random_walk_dense(seeds: torch.Tensor, field: torch.Tensor, offsets, beta: float = 10.0,
                      exp_times: int = 8) -> torch.Tensor:
    """The IRN formulation: square the dense T ``exp_times`` times, then one product."""
    l, h, w = seeds.shape
    t = transition_dense(field.to(seeds.dtype), offsets, beta)
    for _ in range(exp_times):
        t = t @ t
    return (seeds.reshape(l, h * w) @ t).reshape(l, h, w)


def propagate(cams: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
              exp_times: int = 8, dense: bool = False) -> torch.Tensor:
    """IRN's ``propagate_to_edge``: seeds damped on boundaries, then walked. cams (C, h, w),
    boundary (h, w) in [0, 1] at the same resolution."""
    if boundary.shape != cams.shape[1:]:
        boundary = F.interpolate(boundary[None, None], size=cams.shape[1:], mode="bilinear",
                                 align_corners=False)[0, 0]
    offsets, field = affinity_field(boundary, radius)
    walk = random_walk_dense if dense else random_walk
    return walk(cams * (1.0 - boundary), field, offsets, beta, exp_times)
