"""LPCAM feature sampling, shared by the CAM extraction pass (fused: the images are already
decoded and the model loaded) and the stand-alone ``prototypes.sample_features`` stage (for runs
whose CAM maps exist without features).

Both cut the manifest into the same chunks (``plan_chunks`` over every manifest row, sorted by
image_id) and name their shards after the chunk, so a chunk's features are written by exactly one
of them, once: the index shard ``features/index/part-NNNNN.parquet`` marks the chunk done.

Layout under ``features/``:
  class=<n>/part-NNNNN.parquet   image_id, kind (fg|context), feature (float32[D])
  index/part-NNNNN.parquet       (image_id, class_id, n_fg, n_context)
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch

from wsss_ray.cams.lpcam import CONTEXT, FG, split_image
from wsss_ray.config import LPCAMConfig
from wsss_ray.stages.chunks import chunk_name
from wsss_ray.store import open_fs, write_table_atomic

FEATURE_CHUNK = 32      # both paths' chunk size: shard names (and k-means point order) follow it
INDEX_SCHEMA = pa.schema([("image_id", pa.int64()), ("class_id", pa.int32()),
                          ("n_fg", pa.int32()), ("n_context", pa.int32())])


def sample_images(manifest: pa.Table, num_classes: int, per_class: int, seed: int) -> dict[int, list[int]]:
    """image_id -> classes to sample it for: per class, a seeded sample (0 = all images)."""
    by_class: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    for image_id, labels in zip(manifest.column("image_id").to_pylist(), manifest.column("labels").to_pylist()):
        for c in labels:
            by_class[c].append(image_id)
    chosen: dict[int, list[int]] = {}
    for c, ids in by_class.items():
        ids = sorted(ids)
        if per_class and len(ids) > per_class:
            ids = sorted(np.random.default_rng([seed, c]).choice(ids, per_class, replace=False).tolist())
        for image_id in ids:
            chosen.setdefault(int(image_id), []).append(c)
    return chosen


def sampling_order(shapes: dict[int, tuple], manifest_ids) -> list[int]:
    """The order the feature sampling visits the images in ``shapes`` (image_id -> (H, W)):
    chunks of all sorted manifest ids, then same-shape batches (``extract.batches_by_shape``).
    k-means depends on point order, so a caller that clusters elsewhere feeds it the same."""
    ids = sorted(manifest_ids)
    order = []
    for i in range(0, len(ids), FEATURE_CHUNK):
        order += sorted((j for j in ids[i:i + FEATURE_CHUNK] if j in shapes), key=lambda j: (tuple(shapes[j]), j))
    return order


def with_sample_classes(manifest: pa.Table, num_classes: int, cfg: LPCAMConfig) -> pa.Table:
    """The manifest plus a ``sample_classes`` column (empty for images not sampled)."""
    chosen = sample_images(manifest, num_classes, cfg.images_per_class, cfg.seed)
    column = [chosen.get(i, []) for i in manifest.column("image_id").to_pylist()]
    return manifest.append_column("sample_classes", pa.array(column, pa.list_(pa.int32())))


def has_samples(rows: list[dict]) -> bool:
    return any(r.get("sample_classes") for r in rows)


class FeatureSampler:
    """Collects one chunk's foreground / context features per class, then writes its shards.

    The CAM that splits an image is given at storage precision (uint8 levels), so the fused and
    the stand-alone paths split every image identically.
    """

    def __init__(self, output_dir: str, cfg: LPCAMConfig, dim: int):
        self.output_dir, self.cfg, self.dim = output_dir, cfg, dim
        self.seconds = 0.0
        self._reset()

    def _reset(self) -> None:
        self.per_class: dict[int, list[tuple[int, str, np.ndarray]]] = {}
        self.index: list[dict] = []

    def add(self, image_id: int, features: torch.Tensor, cam_classes: list[int], cams: torch.Tensor,
            sample_classes: list[int]) -> None:
        """One image: (D,h,w) scale-1.0 features, its stored CAM maps (one per cam_classes entry)."""
        start = time.perf_counter()
        for c, fg, ctx in split_image(image_id, features, cam_classes, cams, sample_classes, self.cfg):
            rows = self.per_class.setdefault(c, [])
            rows += [(image_id, FG, v) for v in fg] + [(image_id, CONTEXT, v) for v in ctx]
            self.index.append({"image_id": image_id, "class_id": c, "n_fg": len(fg), "n_context": len(ctx)})
        self.seconds += time.perf_counter() - start

    def write(self, chunk_id: int) -> None:
        """Class shards first, the index shard last: it marks the chunk complete."""
        start = time.perf_counter()
        fs, path = open_fs(self.output_dir)
        for c, rows in self.per_class.items():
            flat = np.concatenate([v for _, _, v in rows]) if rows else np.zeros(0, np.float32)
            table = pa.table({"image_id": pa.array([r[0] for r in rows], pa.int64()),
                              "kind": pa.array([r[1] for r in rows], pa.string()),
                              "feature": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), self.dim)})
            write_table_atomic(table, fs, f"{path}/class={c}/{chunk_name(chunk_id)}")
        write_table_atomic(pa.Table.from_pylist(self.index, schema=INDEX_SCHEMA), fs,
                           f"{path}/index/{chunk_name(chunk_id)}")
        self._reset()
        self.seconds += time.perf_counter() - start
