"""ReCAM (METHODS.md section 1): softmax cross-entropy on class-specific features.

For each GT class k of an image: ``M_k = relu(A_k) / (max relu(A_k) + 1e-5)`` with
``A = W f`` the CAM of the BCE head; ``f_k = GAP(M_k * f)``; FC2 logits ``z'_k = W2 f_k``;
SCE = cross-entropy of ``z'_k`` against k, averaged over the image's GT classes, then
over images. ``M_k`` is not detached by default (the authors' code), so the SCE
gradient reaches the backbone through it as well as through ``f``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import EPS, class_activation


def class_specific_features(features: torch.Tensor, weight: torch.Tensor, detach: bool = False) -> torch.Tensor:
    """(N,D,h,w) features, (C,D) BCE weight -> (N,C,D) ``f_k = GAP(M_k * f)`` for every class."""
    cams = torch.relu(class_activation(features, weight))
    masks = cams / (cams.flatten(2).amax(-1)[..., None, None] + EPS)
    if detach:
        masks = masks.detach()
    h, w = features.shape[-2:]
    return torch.einsum("nchw,ndhw->ncd", masks, features) / (h * w)


def sce_loss_terms(features: torch.Tensor, weight: torch.Tensor, fc2_weight: torch.Tensor,
                   targets: torch.Tensor, detach: bool = False) -> tuple[torch.Tensor, int]:
    """(sum over labelled images of the per-image mean SCE, number of labelled images).

    Returning the sum and the count (not the mean) lets the caller divide by the
    global count across DDP workers, so the loss is right for any number of workers.
    Images without labels contribute nothing (no NaN).
    """
    class_feats = class_specific_features(features, weight, detach)          # (N,C,D)
    logits = class_feats @ fc2_weight.reshape(fc2_weight.shape[0], -1).t()    # (N,C,C): row k = z'_k
    n, c = targets.shape
    log_p = F.log_softmax(logits, dim=-1)
    nll = -log_p.diagonal(dim1=1, dim2=2)                                      # (N,C): -log p_k(z'_k)
    positives = targets > 0
    per_image_count = positives.sum(1)
    labelled = per_image_count > 0
    per_image = (nll * positives).sum(1)[labelled] / per_image_count[labelled]
    return per_image.sum(), int(labelled.sum())


def recam_sce_mean(features, weight, fc2_weight, targets, detach=False) -> torch.Tensor:
    """Single-process SCE: mean over labelled images (0 when none)."""
    total, count = sce_loss_terms(features, weight, fc2_weight, targets, detach)
    return total / max(count, 1)
