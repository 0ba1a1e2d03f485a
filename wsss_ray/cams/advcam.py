"""AdvCAM (METHODS.md section 1b; objective as cited by ReCAM, seed 002 eq. 10): anti-adversarial
climbing on the input image, accumulating the CAM of every climbed image.

A *copy* is one (image, GT class k, flip) at one scale. For each copy, x_0 is the bicubic-scaled
(and, for the flip copy, mirrored) image; for t = 1..T (T = ``steps``)::

    A = class_activation(features(x_{t-1}), W),  CAM = relu(A),  y_c = mean_hw CAM_c
    L = y_k - sum_{j != k} y_j - mu * || M * |CAM_k(x_{t-1}) - CAM_k(x_0)| ||_1
    M = 1(CAM_k(x_{t-1}) > mask_threshold * max CAM_k(x_{t-1}))        (no gradient)
    x_t = clamp(x_{t-1} + step_size * dL/dx / max|dL/dx|,  per-channel [min, max] of x_0)

The copy's map is ``sum_{t=0..T} CAM_k(x_t)``. Per scale the flip copy's map is mirrored back and
added, upsampled bilinearly to ``out_size``; scales are summed and each class map is divided by its
max + 1e-5 -- exactly CAM's post-processing (section 0), so ``steps=0`` reproduces plain CAM.

Choices (paper / ReCAM text vs the AdvCAM authors' ``obtain_CAM_masking.py``):

* ``j != k`` runs over **all** classes, not only the image's GT ones: ReCAM's eq. 10 sums over
  ``K \\ k`` with K the whole label set, and the authors' code uses ``-2 y_k + sum_j y_j`` over all 20.
* CAM_k in the regulariser is the raw ``relu(A_k)`` (not max-normalised), as in the code (its map
  is un-normalised) so ``mu = 7`` keeps the scale it was tuned for; eq. 10 writes normalised maps, but
  the mask is the same either way. The code's map is a Grad-CAM of layer4 (weights = mean positive
  gradient); we use the CAM weight passed in, as METHODS.md specifies.
* Accumulation: x_0 .. x_T, i.e. T+1 maps from T climbing steps (T backward passes, T+1 forwards;
  the last forward runs without a graph). The code accumulates before each step and never looks at
  its last climbed image, i.e. x_0 .. x_{26} for its 27 iterations (= our ``steps=26``). Ours keeps
  ``steps=0`` == plain CAM.
* Copies are independent: the flip copy climbs on its own objective, regulariser and step size. The
  code climbs the [image, flip] pair as one unit (regulariser and mask on the flip-fused map, one
  gradient max over both) -- a coupling that only exists because it runs batch 1.
* Step normalisation uses each copy's own max|grad| (+1e-12, so a zero gradient means no step), and
  the clamp is per channel of that copy's x_0. The code clamps to the current image's global min/max.
* Every scale climbs ``steps`` steps. The code gives scale 0.5 half the steps (13) times 2, and its
  weight 2 then leaks to every later scale (a uniform factor, harmless after max-normalisation).

Gradients: the extraction stage calls map fns under ``torch.no_grad()``; climbing re-enables
gradients locally and takes ``torch.autograd.grad`` w.r.t. the input only, so model parameters'
``requires_grad`` and ``.grad`` are untouched. Copies must not interact inside ``features_fn``
(BatchNorm in eval mode), which is what makes one backward of the summed objective give every copy
its own gradient.

Cost (defaults, per image with n GT classes): CAM runs 8 forward inputs (4 scales x 2 flips)
shared by all classes. AdvCAM runs 8n copies, each 27 forward+backward passes plus one forward,
i.e. 216n forward+backward + 8n forward passes: 28n x CAM's backbone inputs, about 55-80n x its
compute (a backward costs 1-2 forwards); measured 224 vs 8 inputs and ~39x CPU time for n=1 on the
tiny backbone at 96 px. Batching changes the number of calls, not that count.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import base_batch, class_activation, fuse_flips, normalise_per_map, scaled_batch, with_flips
from wsss_ray.config import AdvCamConfig  # noqa: F401  (typed configs live in config.py)

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]
GRAD_EPS = 1e-12


# ------------------------------------------------------------------ objective


def relu_cams(features_fn: FeaturesFn, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) relu(A) for every class."""
    return torch.relu(class_activation(features_fn(x), weight))


def pick_class(cams: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w), (B,) -> (B,h,w): each copy's own class map."""
    return cams[torch.arange(cams.shape[0], device=cams.device), cls]


def class_margin(cams: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """y_k - sum_{j != k} y_j with y = GAP(relu(A)), over all classes: (B,)."""
    y = cams.mean((2, 3))
    return 2 * y.gather(1, cls[:, None])[:, 0] - y.sum(1)


def discriminative_mask(cam_k: torch.Tensor, threshold: float) -> torch.Tensor:
    """M: pixels above ``threshold`` x the map's own max (none for an all-zero map); no gradient."""
    cam_k = cam_k.detach()
    peak = cam_k.flatten(1).amax(1)[:, None, None]
    return (cam_k > threshold * peak).to(cam_k.dtype)


def mask_regulariser(cam_k: torch.Tensor, base: torch.Tensor, threshold: float) -> torch.Tensor:
    """|| M * |CAM_k(x_{t-1}) - CAM_k(x_0)| ||_1 per copy: (B,)."""
    mask = discriminative_mask(cam_k, threshold)
    return (mask * (cam_k - base).abs()).sum((1, 2))


def adversarial_objective(cams: torch.Tensor, cls: torch.Tensor, base: torch.Tensor, mu: float,
                          threshold: float) -> torch.Tensor:
    """Per-copy AdvCAM objective (to maximise): (B,)."""
    objective = class_margin(cams, cls)
    if mu:
        objective = objective - mu * mask_regulariser(pick_class(cams, cls), base, threshold)
    return objective


# ------------------------------------------------------------------ climbing


def objective_gradient(features_fn: FeaturesFn, weight: torch.Tensor, x: torch.Tensor, cls: torch.Tensor,
                       base: torch.Tensor | None, cfg: AdvCamConfig):
    """(all-class CAMs of x, dL/dx) for every copy; ``base=None`` means x is x_0 itself.

    Copies are independent, so the gradient of the summed objective is each copy's own gradient.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        cams = relu_cams(features_fn, weight, x)
        base = pick_class(cams, cls).detach() if base is None else base
        objective = adversarial_objective(cams, cls, base, cfg.mu, cfg.mask_threshold)
        (grad,) = torch.autograd.grad(objective.sum(), x)
    return cams.detach(), grad


def climb_step(x: torch.Tensor, grad: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
               step_size: float) -> torch.Tensor:
    """x + step_size * grad / max|grad| (each copy's own max), clamped to [low, high] per channel."""
    scale = grad.abs().flatten(1).amax(1).view(-1, 1, 1, 1) + GRAD_EPS
    return torch.minimum(torch.maximum(x + step_size * grad / scale, low), high)


def channel_range(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per copy, per channel min and max of x_0: two (B,3,1,1) tensors."""
    flat = x0.flatten(2)
    return flat.amin(2)[..., None, None], flat.amax(2)[..., None, None]


def climbing_path(features_fn: FeaturesFn, weight: torch.Tensor, x0: torch.Tensor, cls: torch.Tensor,
                  cfg: AdvCamConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x_t, all-class CAMs of x_t), both detached, for t = 0..steps."""
    low, high = channel_range(x0)
    x, base = x0.detach(), None
    for _ in range(cfg.steps):
        cams, grad = objective_gradient(features_fn, weight, x, cls, base, cfg)
        base = pick_class(cams, cls) if base is None else base
        yield x, cams
        x = climb_step(x, grad, low, high, cfg.step_size)
    with torch.no_grad():   # the last image needs no gradient; yield outside the block
        cams = relu_cams(features_fn, weight, x)
    yield x, cams


def climb(features_fn: FeaturesFn, weight: torch.Tensor, x0: torch.Tensor, cls: torch.Tensor,
          cfg: AdvCamConfig) -> torch.Tensor:
    """sum_{t=0..steps} CAM_k(x_t) per copy, at feature resolution: (B,h,w)."""
    total = None
    for _, cams in climbing_path(features_fn, weight, x0, cls, cfg):
        cam_k = pick_class(cams, cls)
        total = cam_k if total is None else total + cam_k
    return total


def climb_chunked(features_fn: FeaturesFn, weight: torch.Tensor, x0: torch.Tensor, cls: torch.Tensor,
                  cfg: AdvCamConfig) -> torch.Tensor:
    return torch.cat([climb(features_fn, weight, xs, ks, cfg)
                      for xs, ks in zip(x0.split(cfg.max_batch), cls.split(cfg.max_batch))])


# ------------------------------------------------------------------ maps


def class_pairs(classes: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, class id) of every GT class of every image, in image-then-list order."""
    owner = [i for i, cls in enumerate(classes) for _ in cls]
    ids = [int(c) for cls in classes for c in cls]
    return (torch.tensor(owner, dtype=torch.long, device=device),
            torch.tensor(ids, dtype=torch.long, device=device))


def scale_maps(features_fn: FeaturesFn, weight: torch.Tensor, images: torch.Tensor, owner: torch.Tensor,
               cls: torch.Tensor, scale: float, out_size: tuple[int, int], flip: bool,
               cfg: AdvCamConfig) -> torch.Tensor:
    """One scale: climb every (image, class) pair and its flip copy, fuse flips, upsample: (P,*out_size)."""
    x0 = with_flips(scaled_batch(images, scale)[owner], flip)   # [pairs, flipped pairs]
    copy_cls = cls.repeat(2) if flip else cls
    maps = fuse_flips(climb_chunked(features_fn, weight, x0, copy_cls, cfg), flip)
    return F.interpolate(maps[:, None], size=out_size, mode="bilinear", align_corners=False)[:, 0]


def advcam_maps(features_fn: FeaturesFn, weight: torch.Tensor, images: torch.Tensor, classes,
                out_size: tuple[int, int], scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                cfg: AdvCamConfig = AdvCamConfig(), normalise: bool = True) -> list[torch.Tensor]:
    """AdvCAM maps: list of N tensors (len(classes[i]), *out_size), each map max-normalised
    (``normalise=False``: the sum over scales)."""
    out_size = tuple(out_size)
    owner, cls = class_pairs(classes, images.device)
    if len(cls) == 0:
        return [base_batch(images).new_zeros(0, *out_size) for _ in classes]
    weight = weight.detach()
    total = sum(scale_maps(features_fn, weight, images, owner, cls, s, out_size, flip, cfg) for s in scales)
    per_image = (normalise_per_map(total) if normalise else total).split([len(c) for c in classes])
    return list(per_image)
