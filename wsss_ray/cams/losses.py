"""InferCam's activation-aware mask refinement loss (METHODS.md section 3; seed 004, eq. 4).

Not in the authors' public code; the choices below settle what the paper leaves open.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def background_log_probs(seg_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_bg, log(1 - p_bg)) of softmax channel 0, computed stably from the logits: (N,H,W) each."""
    total = torch.logsumexp(seg_logits, 1)
    return seg_logits[:, 0] - total, torch.logsumexp(seg_logits[:, 1:], 1) - total


def background_iou(pseudo_labels: torch.Tensor, saliency: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Per-image IoU (N,) between pseudo-label background (label 0) and saliency background
    (saliency < 0.5), both restricted to non-ignored pixels.

    An empty union (both say "no background") counts as full agreement (1); an image whose
    pixels are all ignored gives 0, which switches its saliency term off.
    """
    valid = pseudo_labels != ignore_index
    label_bg = (pseudo_labels == 0) & valid
    sal_bg = (saliency < 0.5) & valid
    inter = (label_bg & sal_bg).flatten(1).sum(1).float()
    union = (label_bg | sal_bg).flatten(1).sum(1).float()
    agree = valid.flatten(1).any(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), agree)


def activation_aware_saliency_loss(seg_logits: torch.Tensor, pseudo_labels: torch.Tensor, saliency: torch.Tensor,
                                   alpha: float = 0.08, ignore_index: int = 255):
    """``L = L_seg + alpha * (exp(t) - 1) * L_sal`` (eq. 4); returns (total, parts).

    seg_logits: (N,K,H,W) with K >= 2 and channel 0 = background; pseudo_labels: (N,H,W) long;
    saliency: (N,H,W) or (N,1,H,W), foreground probability in [0, 1]. All at the same H, W (the
    caller resizes; no implicit interpolation here).

    Choices:
    - ``L_seg``: cross-entropy averaged over all non-ignored pixels of the batch (0 if none).
    - ``L_sal``: BCE between p_bg = softmax(seg_logits)[:, 0] and the soft target 1 - saliency,
      averaged over *all* pixels of an image: saliency is its own supervision and is meant to
      refine boundaries, which is exactly where pseudo-labels are usually ignored (255).
    - ``t``: computed per image (:func:`background_iou`, thresholded saliency < 0.5, ignored
      pixels excluded); the paper calls it the "mean IoU" of the two background masks, and a
      per-image value lets an image whose saliency disagrees with its pseudo-label switch off
      only its own saliency term. ``t`` depends only on labels and saliency, so no gradient.
    - The saliency term is ``mean_n alpha * (exp(t_n) - 1) * L_sal_n`` over the batch.
    parts: ``seg``, ``sal`` (unweighted batch mean), ``t`` (batch mean), ``sal_weight`` (batch mean
    of alpha * (exp(t) - 1)), all detached.
    """
    if seg_logits.shape[1] < 2:
        raise ValueError("seg_logits needs a background channel and at least one class")
    if saliency.dim() == 4:
        saliency = saliency[:, 0]
    if pseudo_labels.shape != seg_logits.shape[:1] + seg_logits.shape[2:] or saliency.shape != pseudo_labels.shape:
        raise ValueError(f"shape mismatch: logits {tuple(seg_logits.shape)}, labels "
                         f"{tuple(pseudo_labels.shape)}, saliency {tuple(saliency.shape)}")
    valid = pseudo_labels != ignore_index
    if valid.any():
        seg = F.cross_entropy(seg_logits, pseudo_labels.long(), ignore_index=ignore_index)
    else:
        seg = seg_logits.sum() * 0.0  # keeps the graph, avoids CE's NaN on no valid pixel
    log_bg, log_fg = background_log_probs(seg_logits)
    target = (1.0 - saliency).to(seg_logits.dtype)
    sal = -(target * log_bg + (1.0 - target) * log_fg).flatten(1).mean(1)   # (N,)
    t = background_iou(pseudo_labels, saliency, ignore_index).to(seg_logits.dtype)
    weight = alpha * (torch.exp(t) - 1.0)
    total = seg + (weight * sal).mean()
    parts = {"seg": seg.detach(), "sal": sal.mean().detach(), "t": t.mean(), "sal_weight": weight.mean()}
    return total, parts
