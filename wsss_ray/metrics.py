"""Seed-mask evaluation: confusion matrices for many background thresholds in one pass.

A pixel's prediction at threshold t is argmax over [t, map_1, ..., map_C] (ties go to
background, as numpy's argmax with the background plane first). The winning class and
its score do not depend on t, so one histogram over (threshold bucket, gt, class) gives
every threshold's confusion matrix after a cumulative sum.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255


def threshold_confusions(scores: np.ndarray, gt: np.ndarray, classes, num_classes: int,
                         thresholds) -> np.ndarray:
    """Confusion matrices (T, K, K), K = num_classes + 1 (0 = background), rows = GT.

    scores: (c, H, W) maps of the image's ``classes`` (class ids); gt: (H, W) with 0 =
    background, id + 1 = class, 255 = ignore.
    """
    thresholds = np.asarray(thresholds, np.float64)
    # the bucket trick below needs ascending thresholds: work sorted, answer in the caller's order
    order = np.argsort(thresholds, kind="stable")
    thresholds = thresholds[order]
    k = num_classes + 1
    valid = gt != IGNORE
    gt_v = gt[valid].astype(np.int64)
    if len(classes) == 0:
        best_score = np.zeros(gt_v.shape, np.float64)
        best_class = np.zeros(gt_v.shape, np.int64)
    else:
        flat = scores.reshape(len(classes), -1)[:, valid.reshape(-1)]
        best_class = np.asarray(classes, np.int64)[flat.argmax(0)] + 1
        best_score = flat.max(0)
    # bucket b = number of thresholds strictly below the score: the pixel is foreground
    # for thresholds t_0..t_{b-1} and background from t_b on.
    bucket = np.searchsorted(thresholds, best_score, side="left")
    n_t = len(thresholds)
    hist = np.bincount((bucket * k + gt_v) * k + best_class, minlength=(n_t + 1) * k * k)
    hist = hist.reshape(n_t + 1, k, k)
    conf = np.zeros((n_t, k, k), np.int64)
    # foreground at threshold i: pixels whose bucket > i (reverse cumulative sum)
    fg_from = np.cumsum(hist[::-1], 0)[::-1]          # fg_from[b] = sum of hist[b:]
    for i in range(n_t):
        fg = fg_from[i + 1]
        conf[i] += fg
        conf[i, :, 0] += (hist.sum(0) - fg).sum(1)    # everything else predicted background
    out = np.empty_like(conf)
    out[order] = conf
    return out


def class_counts(conf: np.ndarray) -> np.ndarray:
    """(..., K, K) confusions -> (..., K, 3) per-class [true positives, GT pixels, predicted
    pixels]: all the scores need, and summable over images (a per-image record K times
    smaller than the confusion)."""
    conf = np.asarray(conf)
    return np.stack([np.diagonal(conf, axis1=-2, axis2=-1), conf.sum(-1), conf.sum(-2)], -1)


def scores_from_counts(counts: np.ndarray) -> dict:
    """IoU per class, mIoU over classes present in GT or prediction, and LPCAM's Table-1
    FP / FN (fraction of a class's union that is false positive / false negative),
    precision and recall, all means over the same classes; counts (K, 3) from ``class_counts``."""
    counts = np.asarray(counts, np.float64)
    tp, gt_total, pred_total = counts[:, 0], counts[:, 1], counts[:, 2]
    union = gt_total + pred_total - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    fp = np.where(present, (pred_total - tp) / np.maximum(union, 1), np.nan)
    fn = np.where(present, (gt_total - tp) / np.maximum(union, 1), np.nan)
    precision = np.where(pred_total > 0, tp / np.maximum(pred_total, 1), np.where(present, 0.0, np.nan))
    recall = np.where(gt_total > 0, tp / np.maximum(gt_total, 1), np.where(present, 0.0, np.nan))
    return {
        "miou": float(np.nanmean(iou)),
        "fp": float(np.nanmean(fp)),
        "fn": float(np.nanmean(fn)),
        "precision": float(np.nanmean(precision)),
        "recall": float(np.nanmean(recall)),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }


def scores_from_confusion(conf: np.ndarray) -> dict:
    """``scores_from_counts`` of a (K, K) confusion (rows = GT)."""
    return scores_from_counts(class_counts(conf))


def miou_of_counts(counts: np.ndarray) -> np.ndarray:
    """mIoU of many count arrays at once: (..., K, 3) -> (...), NaN where no class is present
    (the vectorised ``scores_from_counts(...)["miou"]``, for bootstrap resamples)."""
    counts = np.asarray(counts, np.float64)
    tp, union = counts[..., 0], counts[..., 1] + counts[..., 2] - counts[..., 0]
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    present = (union > 0).sum(-1)
    return np.where(present > 0, np.nansum(iou, -1) / np.maximum(present, 1), np.nan)


def full_resolution(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stored (c,h,w) maps -> (c,H,W) by bilinear upsampling (no-op at stride 1)."""
    if maps.shape[1:] == (height, width) or maps.shape[0] == 0:
        return maps if maps.shape[0] else np.zeros((0, height, width), np.float32)
    t = torch.from_numpy(maps)[None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()


def gt_at(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """GT mask at the evaluation size (nearest, so labels stay labels)."""
    if mask.shape == (height, width):
        return mask
    from PIL import Image
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
