"""Paired bootstrap of the difference in best-threshold mIoU between two methods.

mIoU is a ratio of pixel counts summed over the whole set, not a mean over images, so the
interval comes from resampling images: each resample draws the images with replacement
(the same draw for both methods: paired), sums each method's per-image class counts
(``metrics.class_counts``), picks each method's best threshold on that resample (the
statistic the tables report) and takes the difference. Pure numpy.
"""
from __future__ import annotations

import numpy as np

from wsss_ray.metrics import miou_of_counts


def resample_weights(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_images) multiplicities: how often each image is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=resamples)


def best_miou_of_weights(per_image: np.ndarray, weights: np.ndarray, chunk: int = 100) -> np.ndarray:
    """Best-threshold mIoU of each resample: per_image (N, T, K, 3), weights (R, N) -> (R,)."""
    n, t, k, _ = per_image.shape
    flat = per_image.reshape(n, -1).astype(np.float64)
    out = np.empty(len(weights))
    for start in range(0, len(weights), chunk):       # chunks keep (chunk, T, K, 3) small at COCO's 81 classes
        summed = (weights[start:start + chunk] @ flat).reshape(-1, t, k, 3)
        out[start:start + chunk] = np.nanmax(miou_of_counts(summed), axis=1)
    return out


def paired_bootstrap(counts_a: np.ndarray, counts_b: np.ndarray, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Best-threshold mIoU of A minus that of B with its percentile interval.

    counts_a, counts_b: (N, T, K, 3) per-image class counts of the same N images in the same
    order, on the same thresholds."""
    if counts_a.shape != counts_b.shape:
        raise ValueError(f"paired bootstrap needs the same images and thresholds: {counts_a.shape} vs {counts_b.shape}")
    if len(counts_a) < 2:
        raise ValueError("paired bootstrap needs at least two images")
    observed = (np.nanmax(miou_of_counts(counts_a.sum(0, dtype=np.float64)))
                - np.nanmax(miou_of_counts(counts_b.sum(0, dtype=np.float64))))
    weights = resample_weights(len(counts_a), resamples, seed)
    diffs = best_miou_of_weights(counts_a, weights) - best_miou_of_weights(counts_b, weights)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(diffs, [tail, 100 - tail])
    return {"difference": float(observed), "low": float(low), "high": float(high), "level": level,
            "resamples": resamples, "seed": seed, "share_above_zero": float(np.mean(diffs > 0))}
