"""AdvCAM (METHODS.md section 1b) as the authors' ``obtain_CAM_masking.py`` computes it:
anti-adversarial climbing on the input image, accumulating the class's map along the path.

A *pair* is one (image, GT class k) at one scale: the image and its mirror, climbed as one unit
(the authors run batch 1 with the MSF dataset's [image, flip] pair). For t = 0..T-1::

    A = class_activation(features(x_t), W)              (both copies, all classes)
    G_t = gradcam_k(x_t) + flip(gradcam_k(flip copy))    (the pair's fused map of class k)
    L = sum_copies [y_k - sum_{j != k} y_j] - mu * || M * |G_t - G_0| ||_1,   y = GAP(relu(A))
    M = 1(G_t / max G_t > mask_threshold)                (no gradient; an all-zero map has none)
    x_{t+1} = clamp(x_t + step_size * dL/dx / (max|dL/dx| + 1e-12),  [min x_t, max x_t])

The pair's map is ``sum_{t=0..T-1} G_t`` (the last climbed image is never looked at). Maps of every
scale are upsampled bilinearly to ``out_size`` and summed; each class map is divided by its max +
1e-5, as for CAM.

What the authors' code does, each rule kept here:

* **Grad-CAM of the last stage** (their ``gradCAM.py`` on ``stage4``): channel weights are the
  gradient of ``sum_hw relu(A_k)`` (summed over both copies) w.r.t. the features, summed over
  positions and divided by the number of positive gradient entries in the whole pair tensor
  (``gap2d_pos``). With a linear head and no bias this is ``relu(A_k)`` times ``n_b / N``: ``n_b``
  the copy's count of positions with ``A_k > 0``, ``N = (n_image + n_flip) * P_k`` with ``P_k`` the
  number of positive entries of ``W_k``. The factor is a constant of each step (no gradient).
* The margin sums over **all** classes (``-2 y_k + sum_j y_j``), not only the image's GT ones.
* The step is normalised by the max |gradient| over the **whole pair**, and the clamp uses the
  **current** pair's global min and max (all channels, both copies).
* **Scale 0.5 climbs fewer steps**: ``steps // 2`` when steps > 10, 5 when 6 <= steps <= 10, else
  ``steps``. The code also multiplies every scale's map by 2 when steps > 10 (its ``mul_for_scale``
  is set at scale 0.5, processed first, and never reset): a uniform factor that the max
  normalisation removes, so it is left out (raw maps, ``normalise=False``, are half the code's).

Gradients: the extraction stage calls map fns under ``torch.no_grad()``; climbing re-enables
gradients locally and takes ``torch.autograd.grad`` w.r.t. the input only, so model parameters'
``requires_grad`` and ``.grad`` are untouched. Pairs must not interact inside ``features_fn``
(BatchNorm in eval mode), which is what makes one backward of the summed objective give every pair
its own gradient.

Cost (defaults, per image with n GT classes): CAM runs 8 forward inputs (4 scales x 2 flips) shared
by all classes. AdvCAM climbs 4n pairs: (13 + 3 x 27) = 94 forward+backward passes of a pair per
class, i.e. 188n copies' forward+backward against CAM's 8 forwards.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from wsss_ray.cams.cam import (base_batch, class_activation, fuse_flips, normalise_per_map, scaled_batch, upsample_maps,
                               with_flips)
from wsss_ray.config import AdvCamConfig  # noqa: F401  (typed configs live in config.py)

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]
GRAD_EPS = 1e-12
SHORT_SCALE = 0.5   # the authors' second scale, which climbs fewer steps


def steps_at_scale(steps: int, scale: float) -> int:
    """The authors' step count: fewer at scale 0.5 (their ``total_adv_iter``)."""
    if scale != SHORT_SCALE or steps < 6:
        return steps
    return steps // 2 if steps > 10 else 5


# ------------------------------------------------------------------ per-pair bookkeeping
# Copies are laid out as with_flips does: [images of the P pairs, their mirrors], i.e. G groups of P.


def pair_sum(values: torch.Tensor, groups: int) -> torch.Tensor:
    """(G*P,) -> (P,): sum over each pair's copies."""
    return values.view(groups, -1).sum(0)


def pair_extreme(x: torch.Tensor, groups: int, largest: bool) -> torch.Tensor:
    """(G*P, ...) -> (G*P, 1, 1, 1): each pair's global max (or min) over all its copies' values."""
    flat = x.reshape(groups, x.shape[0] // groups, -1)
    ext = flat.amax((0, 2)) if largest else flat.amin((0, 2))
    return ext.repeat(groups).view(-1, *([1] * (x.dim() - 1)))


# ------------------------------------------------------------------ objective


def positive_entries(weight: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """P_k: how many entries of each pair's class weight are positive: (P,)."""
    return (weight.reshape(weight.shape[0], -1)[cls] > 0).sum(1)


def fused_gradcam(act_k: torch.Tensor, n_positive_w: torch.Tensor, flip: bool) -> torch.Tensor:
    """The pair's Grad-CAM of its class, flips fused: (G*P,h,w) raw A_k -> (P,h,w).

    Each copy's map is relu(A_k) * n_b / N (see the module docstring); the factor carries no gradient.
    """
    groups = 2 if flip else 1
    n = (act_k.detach() > 0).flatten(1).sum(1)
    total = pair_sum(n, groups) * n_positive_w
    share = n.to(act_k.dtype) / (total.repeat(groups).to(act_k.dtype) + GRAD_EPS)
    return fuse_flips(torch.relu(act_k) * share[:, None, None], flip)


def class_margin(act: torch.Tensor, cls: torch.Tensor, groups: int) -> torch.Tensor:
    """sum over a pair's copies of y_k - sum_{j != k} y_j, y = GAP(relu(A)) over all classes: (P,)."""
    y = torch.relu(act).mean((2, 3))
    per_copy = 2 * y.gather(1, cls.repeat(groups)[:, None])[:, 0] - y.sum(1)
    return pair_sum(per_copy, groups)


def discriminative_mask(region: torch.Tensor, threshold: float) -> torch.Tensor:
    """M: pixels whose map over its own max exceeds ``threshold`` (none for an all-zero map)."""
    region = region.detach()
    peak = region.flatten(1).amax(1)[:, None, None]
    return (region / peak > threshold).to(region.dtype)     # 0/0 is NaN, never > threshold


def mask_regulariser(region: torch.Tensor, base: torch.Tensor, threshold: float) -> torch.Tensor:
    """|| M * |G_t - G_0| ||_1 per pair: (P,)."""
    return (discriminative_mask(region, threshold) * (region - base).abs()).sum((1, 2))


# ------------------------------------------------------------------ climbing


def objective_gradient(features_fn: FeaturesFn, weight: torch.Tensor, x: torch.Tensor, cls: torch.Tensor,
                       base: torch.Tensor | None, cfg: AdvCamConfig, flip: bool):
    """(the pair's fused map G_t, dL/dx) for every pair; ``base=None`` means x is x_0 itself."""
    groups = 2 if flip else 1
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        act = class_activation(features_fn(x), weight)
        act_k = act[torch.arange(act.shape[0], device=act.device), cls.repeat(groups)]
        region = fused_gradcam(act_k, positive_entries(weight, cls), flip)
        base = region.detach() if base is None else base
        objective = class_margin(act, cls, groups)
        if cfg.mu:
            objective = objective - cfg.mu * mask_regulariser(region, base, cfg.mask_threshold)
        (grad,) = torch.autograd.grad(objective.sum(), x)
    return region.detach(), grad


def climb_step(x: torch.Tensor, grad: torch.Tensor, step_size: float, groups: int) -> torch.Tensor:
    """x + step_size * grad / max|grad| (the pair's max), clamped to the pair's current [min, max]."""
    stepped = x + step_size * grad / (pair_extreme(grad.abs(), groups, True) + GRAD_EPS)
    return torch.minimum(torch.maximum(stepped, pair_extreme(x, groups, False)), pair_extreme(x, groups, True))


def climb(features_fn: FeaturesFn, weight: torch.Tensor, x0: torch.Tensor, cls: torch.Tensor, steps: int,
          cfg: AdvCamConfig, flip: bool) -> torch.Tensor:
    """sum_{t=0..steps-1} G_t per pair, at feature resolution: (P,h,w)."""
    x, base, total = x0.detach(), None, None
    for _ in range(steps):
        region, grad = objective_gradient(features_fn, weight, x, cls, base, cfg, flip)
        base = region if base is None else base
        total = region if total is None else total + region
        x = climb_step(x, grad, cfg.step_size, 2 if flip else 1)
    return total


# ------------------------------------------------------------------ maps


def class_pairs(classes: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, class id) of every GT class of every image, in image-then-list order."""
    owner = [i for i, cls in enumerate(classes) for _ in cls]
    ids = [int(c) for cls in classes for c in cls]
    return (torch.tensor(owner, dtype=torch.long, device=device),
            torch.tensor(ids, dtype=torch.long, device=device))


def scale_maps(features_fn: FeaturesFn, weight: torch.Tensor, images, owner: torch.Tensor, cls: torch.Tensor,
               scale: float, out_size: tuple[int, int], flip: bool, cfg: AdvCamConfig) -> torch.Tensor:
    """One scale: climb every (image, class) pair, chunk by chunk, and upsample: (P,*out_size)."""
    level = scaled_batch(images, scale)
    steps = steps_at_scale(cfg.steps, scale)
    per_chunk = max(1, cfg.max_batch // (2 if flip else 1))
    maps = [climb(features_fn, weight, with_flips(level[o], flip), c, steps, cfg, flip)
            for o, c in zip(owner.split(per_chunk), cls.split(per_chunk))]
    return upsample_maps(torch.cat(maps)[:, None], out_size, base_batch(images).shape[-2:])[:, 0]


def advcam_maps(features_fn: FeaturesFn, weight: torch.Tensor, images, classes,
                out_size: tuple[int, int], scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                cfg: AdvCamConfig = AdvCamConfig(), normalise: bool = True) -> list[torch.Tensor]:
    """AdvCAM maps: list of N tensors (len(classes[i]), *out_size), each map max-normalised
    (``normalise=False``: the sum over scales). ``images``: a tensor or a ``ScalePyramid``."""
    out_size = tuple(out_size)
    owner, cls = class_pairs(classes, base_batch(images).device)
    if len(cls) == 0:
        return [base_batch(images).new_zeros(0, *out_size) for _ in classes]
    weight = weight.detach()
    total = sum(scale_maps(features_fn, weight, images, owner, cls, s, out_size, flip, cfg) for s in scales)
    per_image = (normalise_per_map(total) if normalise else total).split([len(c) for c in classes])
    return list(per_image)
