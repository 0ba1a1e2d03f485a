"""The LPCAM clustering task: reads one class's sampled features and clusters them
(``cams.clustering``, the one implementation).

Kept free of torch and the models: a Ray worker that runs it imports numpy, pyarrow and faiss
only (0.3 s against 3.4 s for the prototypes module), which is most of the clustering step's
cost on small data sets.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wsss_ray.cams import clustering
from wsss_ray.cams.clustering import CONTEXT, FG
from wsss_ray.store import join_uri, list_shards, open_fs


def class_features(features_dir: str, class_id: int, dim: int) -> dict[str, np.ndarray]:
    """One class's sampled features, by kind (memory: this class only)."""
    fs, path = open_fs(join_uri(features_dir, f"class={class_id}"))
    shards = list_shards(fs, path)
    out = {FG: np.zeros((0, dim), np.float32), CONTEXT: np.zeros((0, dim), np.float32)}
    if not shards:
        return out
    table = pa.concat_tables([pq.read_table(s, filesystem=fs) for s in shards])
    feats = table.column("feature").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    kinds = np.asarray(table.column("kind").to_pylist())
    return {FG: feats[kinds == FG], CONTEXT: feats[kinds == CONTEXT]}


def cluster_class(features_dir: str, class_id: int, dim: int, k: int, iters: int, seed: int,
                  use_gpu: bool | None = None, redo: int = 1) -> list[dict]:
    """The centre rows of one class's stored features."""
    return clustering.cluster_class(class_id, class_features(features_dir, class_id, dim), k, iters, seed, use_gpu,
                                    redo)


def cluster_classes(features_dir: str, class_ids: list[int], dim: int, k: int, iters: int, seed: int,
                    use_gpu: bool | None = None, redo: int = 1) -> dict[int, list[dict]]:
    """Several classes one after the other: a task per worker, not per class, so each worker
    starts once; memory stays one class's features."""
    return {c: cluster_class(features_dir, c, dim, k, iters, seed, use_gpu, redo) for c in class_ids}
