"""LPCAM's per-class clustering. Spherical (cosine) k-means on faiss: GPU when faiss-gpu and a
GPU are present, CPU otherwise. Seeded, iteration-capped; prototypes are the means of the raw features of
each cluster (the authors' k-means returns raw means, and their p > mu_f rule is tuned on
those: unit-norm centroids make the softmax too flat to ever pass 0.9).

Free of torch (numpy and faiss only): the Ray clustering task imports this module alone, so
its workers start fast (``stages.cluster_tasks``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FG, CONTEXT = "fg", "context"    # the two kinds of features and prototypes LPCAM clusters


@dataclass
class Clusters:
    prototypes: np.ndarray    # (k', D) raw-feature mean of each non-empty cluster
    sizes: np.ndarray         # (k',) points per cluster
    assign: np.ndarray        # (n,) cluster index of each point (into prototypes)
    iterations: int


def faiss_gpu_available() -> bool:
    import faiss
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def spherical_kmeans(points: np.ndarray, k: int, iters: int = 50, seed: int = 0,
                     use_gpu: bool | None = None, redo: int = 1) -> Clusters:
    """``redo`` > 1: faiss runs k-means that many times from different seeds and keeps the run
    with the best objective (less dependence on the initial centres)."""
    import faiss
    x = np.ascontiguousarray(points, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        return Clusters(np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, n)                          # fewer points than clusters: one cluster per point at most
    gpu = faiss_gpu_available() if use_gpu is None else use_gpu
    km = faiss.Kmeans(d, k, niter=iters, seed=seed, spherical=True, gpu=gpu, nredo=max(1, int(redo)),
                      min_points_per_centroid=1, max_points_per_centroid=max(256, n // k + 1), verbose=False)
    km.train(unit)                        # faiss re-seeds empty clusters by splitting large ones
    _, assign = km.index.search(unit, 1)
    assign = assign[:, 0]
    used = np.unique(assign)              # drop clusters left empty by the final assignment
    remap = np.full(k, -1, np.int64)
    remap[used] = np.arange(len(used))
    assign = remap[assign]
    sizes = np.bincount(assign, minlength=len(used))
    prototypes = cluster_sums(x, assign, len(used)) / sizes[:, None]
    return Clusters(prototypes.astype(np.float32), sizes, assign, iters)


def cluster_sums(x: np.ndarray, assign: np.ndarray, k: int, block: int = 8192) -> np.ndarray:
    """Per-cluster float64 sums of the rows of ``x``, as one-hot matrix products over row blocks
    (BLAS; ``np.add.at`` took 0.95 s of a 2.5 s k-means on 20,000 x 1280 features)."""
    sums = np.zeros((k, x.shape[1]), np.float64)
    for start in range(0, len(x), block):
        rows = assign[start:start + block]
        onehot = np.zeros((k, len(rows)), np.float64)
        onehot[rows, np.arange(len(rows))] = 1.0
        sums += onehot @ x[start:start + block].astype(np.float64)
    return sums


def centre_rows(class_id: int, kind: str, clusters: Clusters) -> list[dict]:
    """One row per cluster centre (the centres table before its class scores)."""
    return [{"class_id": class_id, "kind": kind, "cluster": j, "size": int(n), "vector": v.tolist()}
            for j, (v, n) in enumerate(zip(clusters.prototypes, clusters.sizes))]


def cluster_class(class_id: int, points: dict[str, np.ndarray], k: int, iters: int, seed: int,
                  use_gpu: bool | None = None, redo: int = 1) -> list[dict]:
    """One class's foreground and context points, clustered separately (seeded per class)."""
    return [row for kind in (FG, CONTEXT)
            for row in centre_rows(class_id, kind,
                                   spherical_kmeans(points[kind], k, iters, seed + class_id, use_gpu, redo))]


def cluster_points(per_class: dict[int, dict[str, list[np.ndarray]]], num_classes: int, dim: int,
                   cfg) -> list[dict]:
    """Class -> {kind: row blocks in sampling order} -> the centre rows of every class (its K,
    iterations and seed from ``cfg``), class by class as the prototype stage orders them."""
    rows = []
    for c in range(num_classes):
        blocks = per_class.get(c, {})
        points = {kind: stack_rows(blocks.get(kind, []), dim) for kind in (FG, CONTEXT)}
        rows += cluster_class(c, points, cfg.k, cfg.kmeans_iters, cfg.seed, redo=cfg.kmeans_redo)
    return rows


def stack_rows(blocks: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
