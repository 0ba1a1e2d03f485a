"""LPCAM prototype stage: feature sampling (Ray Data actor pool) -> per-class spherical
k-means (Ray tasks, faiss) -> prototype selection.

Layout under the run directory:
  features/class=<n>/part-NNNNN.parquet   image_id, kind (fg|context), feature (float32[D])
  features/index/part-NNNNN.parquet       (image_id, class_id, n_fg, n_context): chunk done marker
  prototypes/centres.parquet              every cluster centre with its class score p[n]
  prototypes/<name>.parquet               selected prototypes + the config that made them
No process ever holds more than one chunk of images or one class's features.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch

from wsss_ray.cams.lpcam import CONTEXT, FG, class_scores, select_context, select_foreground, split_positions
from wsss_ray.clustering import spherical_kmeans
from wsss_ray.config import CamConfig, LPCAMConfig, to_json
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.extract import ModelRunner, _Factory, batches_by_shape
from wsss_ray.store import decode_maps, join_uri, list_shards, open_fs, read_table_uri, write_table_atomic, write_table_uri

INDEX_SCHEMA = pa.schema([("image_id", pa.int64()), ("class_id", pa.int32()),
                          ("n_fg", pa.int32()), ("n_context", pa.int32())])


def feature_schema(dim: int) -> pa.Schema:
    return pa.schema([("image_id", pa.int64()), ("kind", pa.string()),
                      ("feature", pa.list_(pa.float32(), dim))])


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


class FeatureProcessor(ModelRunner):
    """Scale-1.0 features (no flip), split by each sampled class's CAM at tau."""

    def __init__(self, checkpoint_dir: str, cam_dir: str, output_dir: str, cfg: LPCAMConfig, cam_cfg: CamConfig):
        super().__init__(checkpoint_dir, cam_cfg.use_gpu)
        self.cam_dir, self.output_dir, self.cfg, self.batch_size = cam_dir, output_dir, cfg, cam_cfg.batch_size

    def _cams(self, image_ids: list[int]) -> dict[int, dict]:
        fs, path = open_fs(self.cam_dir)
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table(
            filter=pads.field("image_id").isin(image_ids))
        return {r["image_id"]: r for r in table.to_pylist()}

    def process(self, chunk_id: int, rows: list[dict], images: dict) -> list:
        cams = self._cams([r["image_id"] for r in rows])
        per_class: dict[int, list[dict]] = {}
        index, errors = [], []
        for batch in batches_by_shape(rows, images, self.batch_size):
            feats = self.model.features(self.tensor([images[r["image_id"]] for r in batch]))
            for row, f in zip(batch, feats):
                cam_row = cams.get(row["image_id"])
                if cam_row is None:
                    errors.append((str(row["image_id"]), "no CAM for this image: run CAM extraction first"))
                    continue
                maps = torch.from_numpy(decode_maps(cam_row["data"], cam_row["map_shape"]))
                for c in row["sample_classes"]:
                    rng = np.random.default_rng([self.cfg.seed, row["image_id"], c])
                    fg, ctx = split_positions(f, maps[cam_row["classes"].index(c)], self.cfg.tau,
                                              self.cfg.max_positions_per_image, rng)
                    rows_c = per_class.setdefault(c, [])
                    rows_c += [{"image_id": row["image_id"], "kind": FG, "feature": v} for v in fg]
                    rows_c += [{"image_id": row["image_id"], "kind": CONTEXT, "feature": v} for v in ctx]
                    index.append({"image_id": row["image_id"], "class_id": c, "n_fg": len(fg), "n_context": len(ctx)})
        fs, path = open_fs(self.output_dir)
        dim = self.model.backbone.out_channels
        for c, feature_rows in per_class.items():
            table = pa.table({"image_id": pa.array([r["image_id"] for r in feature_rows], pa.int64()),
                              "kind": pa.array([r["kind"] for r in feature_rows], pa.string()),
                              "feature": pa.FixedSizeListArray.from_arrays(
                                  pa.array(np.concatenate([r["feature"] for r in feature_rows]) if feature_rows
                                           else np.zeros(0, np.float32), pa.float32()), dim)})
            write_table_atomic(table, fs, f"{path}/class={c}/{chunk_name(chunk_id)}")
        # the index shard is written last: it marks the chunk complete
        write_table_atomic(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), fs, f"{path}/index/{chunk_name(chunk_id)}")
        return errors


def sample_features(run: RunDir, checkpoint: str, cfg: LPCAMConfig, cam_cfg: CamConfig,
                    cam_method: str = "cam", chunk_size: int = 32) -> dict:
    manifest, classes = read_manifest(run.manifest())
    chosen = sample_images(manifest, classes.num_classes, cfg.images_per_class, cfg.seed)
    keep = pa.array(sorted(chosen), pa.int64())
    subset = manifest.filter(pads.field("image_id").isin(keep)) if len(keep) else manifest.slice(0, 0)
    subset = subset.append_column("sample_classes", pa.array([chosen[i] for i in subset.column("image_id").to_pylist()],
                                                             pa.list_(pa.int32())))
    output_dir = run.uri("features")
    chunks = plan_chunks(subset, chunk_size)
    todo = pending_chunks(chunks, join_uri(output_dir, "index"))
    start = time.perf_counter()
    factory = _Factory(FeatureProcessor, checkpoint=checkpoint, cam_dir=run.uri("maps", cam_method),
                       output_dir=output_dir, cfg=cfg, cam_cfg=cam_cfg)
    stats = run_chunked(todo, factory, run.uri("errors", "features"), "features", num_actors=cam_cfg.num_actors,
                        actor_cpus=cam_cfg.actor_cpus, use_gpu=cam_cfg.use_gpu, max_side=cam_cfg.max_side)
    return {"images": len(chosen), "chunks_run": len(todo), "seconds": time.perf_counter() - start,
            "errors": int(sum(s["num_errors"] for s in stats))}


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
                  use_gpu: bool | None = None) -> list[dict]:
    """Spherical k-means of one class's foreground and context features separately."""
    rows = []
    for kind, points in class_features(features_dir, class_id, dim).items():
        clusters = spherical_kmeans(points, k, iters, seed + class_id, use_gpu)
        for j, (vec, size) in enumerate(zip(clusters.prototypes, clusters.sizes)):
            rows.append({"class_id": class_id, "kind": kind, "cluster": j, "size": int(size),
                         "vector": vec.tolist()})
    return rows


def cluster_all(run: RunDir, checkpoint: str, cfg: LPCAMConfig, use_gpu: bool = False) -> dict:
    """Cluster every class in parallel (one Ray task per class) -> prototypes/centres.parquet."""
    model, _, _ = load_classifier(checkpoint)
    head = model.head.weight.detach().flatten(1).numpy()
    num_classes, dim = head.shape
    start = time.perf_counter()
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(cluster_class)
    refs = [task.remote(run.uri("features"), c, dim, cfg.k, cfg.kmeans_iters, cfg.seed) for c in range(num_classes)]
    rows = [r for part in ray.get(refs) for r in part]
    if rows:
        scores = class_scores(np.asarray([r["vector"] for r in rows], np.float32), head)
        for r, p in zip(rows, scores):
            r["score"] = float(p[r["class_id"]])
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("class_id", pa.int32()), ("kind", pa.string()), ("cluster", pa.int32()), ("size", pa.int64()),
        ("vector", pa.list_(pa.float32())), ("score", pa.float64())]))
    write_table_uri(table, run.uri("prototypes", "centres.parquet"))
    return {"centres": table.num_rows, "seconds": time.perf_counter() - start}


def select_prototypes(centres: pa.Table, num_classes: int, cfg: LPCAMConfig) -> tuple[pa.Table, dict]:
    """Apply mu_f / (mu_b_low, mu_b_high) to the stored centres (no re-clustering)."""
    rows = centres.to_pylist()
    chosen, fallbacks, no_context = [], [], []
    for c in range(num_classes):
        for kind in (FG, CONTEXT):
            members = [r for r in rows if r["class_id"] == c and r["kind"] == kind]
            scores = np.asarray([r["score"] for r in members])
            if kind == FG:
                idx, fell_back = select_foreground(scores, cfg.mu_f)
                if fell_back:
                    fallbacks.append(c)
            else:
                idx = select_context(scores, cfg.mu_b_low, cfg.mu_b_high)
                if len(idx) == 0:
                    no_context.append(c)
            chosen += [dict(members[i], fallback=kind == FG and bool(fell_back)) for i in idx]
    config = to_json(cfg)
    table = pa.Table.from_pylist([dict(r, config=config) for r in chosen])
    return table, {"fallback_classes": fallbacks, "classes_without_context": no_context,
                   "classes_without_prototypes": sorted(set(range(num_classes)) - {r["class_id"] for r in chosen})}


def build_prototypes(run: RunDir, checkpoint: str, cfg: LPCAMConfig, name: str = "lpcam") -> dict:
    _, classes = read_manifest(run.manifest())
    centres = read_table_uri(run.uri("prototypes", "centres.parquet"))
    table, info = select_prototypes(centres, classes.num_classes, cfg)
    write_table_uri(table, run.uri("prototypes", f"{name}.parquet"))
    run.write_json(run.uri("prototypes", f"{name}.json"), {"config": json.loads(to_json(cfg)), **info,
                                                           "num_prototypes": table.num_rows})
    return {"num_prototypes": table.num_rows, **info}
