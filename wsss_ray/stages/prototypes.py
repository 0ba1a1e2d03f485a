"""LPCAM prototype stage: feature sampling (fused into the CAM pass, or a Ray Data actor
pool of its own) -> per-class spherical k-means (Ray tasks, faiss) -> prototype selection.
The maths is ``cams.lpcam`` (split), ``cams.clustering`` and ``cams.prototypes``; this module
distributes it and stores its results.

Layout under the run directory:
  features/...                            see ``feature_sampling``
  prototypes/centres.parquet              every cluster centre with its class score p[n]
  prototypes/<name>.parquet               selected prototypes + the config that made them
No process ever holds more than one chunk of images or one class's features.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import ray
import torch

from wsss_ray.cams import prototypes
from wsss_ray.config import CamConfig, LPCAMConfig, to_json
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.cluster_tasks import cluster_classes
from wsss_ray.stages.extract import ModelRunner, _Factory, batches_by_shape
from wsss_ray.stages.feature_sampling import FEATURE_CHUNK, FeatureSampler, with_sample_classes
from wsss_ray.store import decode_maps, join_uri, read_map_rows, read_table_uri, write_table_uri

class FeatureProcessor(ModelRunner):
    """Scale-1.0 features (no flip) of a chunk's sampled images, split by their stored CAM at tau."""

    def __init__(self, checkpoint_dir: str, cam_dir: str, output_dir: str, cfg: LPCAMConfig, cam_cfg: CamConfig):
        super().__init__(checkpoint_dir, cam_cfg.use_gpu)
        self.cam_dir, self.batch_size = cam_dir, cam_cfg.batch_size
        self.sampler = FeatureSampler(output_dir, cfg, self.model.backbone.out_channels)

    def process(self, chunk_id: int, rows: list[dict], images: dict) -> list:
        cams = read_map_rows(self.cam_dir, list(images), chunk_name(chunk_id))     # decoded ones only
        errors = []
        for batch in batches_by_shape(rows, images, self.batch_size):
            feats = self.model.features(self.tensor([images[r["image_id"]] for r in batch]))
            for row, f in zip(batch, feats):
                cam_row = cams.get(row["image_id"])
                if cam_row is None:
                    errors.append((str(row["image_id"]), "no CAM for this image: run CAM extraction first"))
                    continue
                maps = torch.from_numpy(decode_maps(cam_row["data"], cam_row["map_shape"]))
                self.sampler.add(row["image_id"], f, cam_row["classes"], maps, row["sample_classes"])
        self.sampler.write(chunk_id)
        return errors


def feature_chunks(manifest: pa.Table, num_classes: int, cfg: LPCAMConfig) -> list[dict]:
    """The CAM pass's chunks, cut to their sampled rows; chunks with none are dropped."""
    chunks = []
    for chunk in plan_chunks(with_sample_classes(manifest, num_classes, cfg), FEATURE_CHUNK):
        rows = [r for r in json.loads(chunk["rows_json"]) if r["sample_classes"]]
        if rows:
            chunks.append({"chunk_id": chunk["chunk_id"], "rows_json": json.dumps(rows)})
    return chunks


def sample_features(run: RunDir, checkpoint: str, cfg: LPCAMConfig, cam_cfg: CamConfig,
                    cam_method: str = "cam") -> dict:
    """Sample the features of every chunk the CAM pass did not sample (none after a fused pass)."""
    manifest, classes = read_manifest(run.manifest())
    output_dir = run.uri("features")
    chunks = feature_chunks(manifest, classes.num_classes, cfg)
    todo = pending_chunks(chunks, join_uri(output_dir, "index"))
    start = time.perf_counter()
    factory = _Factory(FeatureProcessor, checkpoint=checkpoint, cam_dir=run.uri("maps", cam_method),
                       output_dir=output_dir, cfg=cfg, cam_cfg=cam_cfg)
    stats = run_chunked(todo, factory, run.uri("errors", "features"), "features", num_actors=cam_cfg.num_actors,
                        actor_cpus=cam_cfg.actor_cpus, use_gpu=cam_cfg.use_gpu, max_side=cam_cfg.max_side)
    return {"images": sum(len(json.loads(c["rows_json"])) for c in chunks), "chunks_run": len(todo),
            "seconds": time.perf_counter() - start, "errors": int(sum(s["num_errors"] for s in stats))}


CENTRES_SCHEMA = pa.schema([("class_id", pa.int32()), ("kind", pa.string()), ("cluster", pa.int32()),
                            ("size", pa.int64()), ("vector", pa.list_(pa.float32())), ("score", pa.float64())])


def centres_table(rows: list[dict], head: np.ndarray) -> pa.Table:
    """Centre rows with their class score p = softmax(centre . W)[class] (prototypes/centres.parquet)."""
    return pa.Table.from_pylist(prototypes.score_centres(rows, head), schema=CENTRES_SCHEMA)


def cluster_task_groups(num_classes: int, slots: int) -> list[list[int]]:
    """Classes dealt round-robin into at most ``slots`` groups (one Ray task each)."""
    slots = max(1, min(num_classes, slots))
    return [list(range(g, num_classes, slots)) for g in range(slots)]


def cluster_slots(use_gpu: bool) -> int:
    """How many clustering tasks can run at once on the cluster as it is now."""
    resources = ray.cluster_resources()
    return int(resources.get("GPU", 0) if use_gpu else resources.get("CPU", 1)) or 1


def cluster_all(run: RunDir, checkpoint: str, cfg: LPCAMConfig, use_gpu: bool = False) -> dict:
    """Cluster every class -> prototypes/centres.parquet. Classes run in parallel as Ray tasks,
    one task per CPU (GPU) slot, each taking its share of the classes in turn."""
    model, _, _ = load_classifier(checkpoint)
    head = model.head.weight.detach().flatten(1).numpy()
    num_classes, dim = head.shape
    start = time.perf_counter()
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(cluster_classes)
    groups = cluster_task_groups(num_classes, cluster_slots(use_gpu))
    refs = [task.remote(run.uri("features"), group, dim, cfg.k, cfg.kmeans_iters, cfg.seed, None, cfg.kmeans_redo)
            for group in groups]
    by_class = {c: rows for part in ray.get(refs) for c, rows in part.items()}
    table = centres_table([r for c in range(num_classes) for r in by_class[c]], head)
    write_table_uri(table, run.uri("prototypes", "centres.parquet"))
    return {"centres": table.num_rows, "tasks": len(groups), "seconds": time.perf_counter() - start}


def select_prototypes(centres: pa.Table, num_classes: int, cfg: LPCAMConfig) -> tuple[pa.Table, dict]:
    """Apply mu_f / (mu_b_low, mu_b_high) to the stored centres (no re-clustering); each row
    keeps the config that chose it."""
    chosen, info = prototypes.select_prototypes(centres.to_pylist(), num_classes, cfg)
    config = to_json(cfg)
    return pa.Table.from_pylist([dict(r, config=config) for r in chosen]), info


def build_prototypes(run: RunDir, checkpoint: str, cfg: LPCAMConfig, name: str = "lpcam") -> dict:
    _, classes = read_manifest(run.manifest())
    centres = read_table_uri(run.uri("prototypes", "centres.parquet"))
    table, info = select_prototypes(centres, classes.num_classes, cfg)
    write_table_uri(table, run.uri("prototypes", f"{name}.parquet"))
    run.write_json(run.uri("prototypes", f"{name}.json"), {"config": json.loads(to_json(cfg)), **info,
                                                           "num_prototypes": table.num_rows})
    return {"num_prototypes": table.num_rows, **info}
