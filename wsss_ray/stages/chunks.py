"""The chunked actor-pool pattern every per-image stage uses (maps, LPCAM features).

Work is cut into deterministic chunks of the manifest (sorted by image_id). CPU tasks
decode a chunk's images; an actor pool (model loaded once per actor, one GPU each where
GPUs exist) processes whole chunks and writes each chunk's output atomically under a
name derived from the chunk id. A rerun skips chunks whose output exists; a retried
chunk (actor killed) rewrites the same bytes under the same name: every image is written
exactly once, and an interrupted-then-resumed run ends with the same shards as an
uninterrupted one.
"""
from __future__ import annotations

import io
import json
import time
from typing import Callable

import numpy as np
import pyarrow as pa
import ray

from wsss_ray.data.errors import ErrorRecord, ItemError, errors_table
from wsss_ray.data.images import load_rgb
from wsss_ray.store import open_fs, write_table_atomic


def chunk_name(chunk_id: int) -> str:
    return f"part-{chunk_id:05d}.parquet"


def plan_chunks(manifest: pa.Table, chunk_size: int) -> list[dict]:
    """Deterministic chunks of manifest rows, sorted by image_id."""
    rows = sorted(manifest.to_pylist(), key=lambda r: r["image_id"])
    return [{"chunk_id": i // chunk_size, "rows_json": json.dumps(rows[i:i + chunk_size])}
            for i in range(0, len(rows), chunk_size)]


def pack_images(images: dict[int, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{str(k): v for k, v in images.items()})
    return buf.getvalue()


def unpack_images(data: bytes) -> dict[int, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {int(k): z[k] for k in z.files}


def decode_chunk(batch: dict, max_side: int = 0, strict: bool = False) -> dict:
    """CPU task: decode every image of each chunk; bad images become error records."""
    packed, errors = [], []
    for rows_json in batch["rows_json"]:
        images, errs = {}, []
        for row in json.loads(rows_json):
            try:
                if not row["labels"]:
                    raise ItemError(row["uri"], "image has no labels: nothing to map")
                images[row["image_id"]] = load_rgb(row["uri"], max_side=max_side)
            except ItemError as exc:
                if strict:
                    raise
                errs.append({"item": f"{row['image_id']} ({exc.item})", "reason": exc.reason})
        packed.append(pack_images(images))
        errors.append(json.dumps(errs))
    return {"chunk_id": batch["chunk_id"], "rows_json": batch["rows_json"],
            "images": np.array(packed, dtype=object), "errors_json": np.array(errors, dtype=object)}


class ChunkActor:
    """Loads a chunk processor once; calls it on each decoded chunk and records errors.

    ``processor_factory()`` returns an object with ``process(chunk_id, rows, images)``
    that writes the chunk's output and returns a list of (item, reason) errors. A processor
    that does side work in the same pass (LPCAM feature sampling during CAM extraction)
    reports its time in ``side_seconds`` after each chunk.
    """

    def __init__(self, processor_factory: Callable, errors_dir: str, stage: str):
        # torch is imported here, not at module level: the decode tasks import this module
        # too, and torch's import (~1.7 s of CPU) in each of a dozen cold task workers
        # delayed the first extraction of a job by ~40 s on 2 cores
        import torch
        self.no_grad = torch.no_grad
        self.processor = processor_factory()
        self.errors_dir = errors_dir
        self.stage = stage

    def __call__(self, batch: dict) -> dict:
        out = {"chunk_id": [], "num_images": [], "num_errors": [], "seconds": [], "side_seconds": [], "node_id": []}
        for chunk_id, rows_json, packed, errors_json in zip(batch["chunk_id"], batch["rows_json"],
                                                            batch["images"], batch["errors_json"]):
            start = time.perf_counter()
            rows = json.loads(rows_json)
            images = unpack_images(packed)
            errors = [ErrorRecord(self.stage, e["item"], e["reason"]) for e in json.loads(errors_json)]
            with self.no_grad():
                produced = self.processor.process(int(chunk_id), rows, images)
            errors += [ErrorRecord(self.stage, item, reason) for item, reason in produced]
            fs, path = open_fs(self.errors_dir)
            write_table_atomic(errors_table(errors), fs, f"{path}/{chunk_name(int(chunk_id))}")
            out["chunk_id"].append(int(chunk_id))
            out["num_images"].append(len(images))
            out["num_errors"].append(len(errors))
            out["seconds"].append(time.perf_counter() - start)
            out["side_seconds"].append(float(getattr(self.processor, "side_seconds", 0.0)))
            out["node_id"].append(ray.get_runtime_context().get_node_id())       # where the work ran
        return {k: np.asarray(v) for k, v in out.items()}


def run_chunked(chunks: list[dict], processor_factory: Callable, errors_dir: str, stage: str,
                num_actors: int = 1, actor_cpus: float = 1.0, use_gpu: bool = False,
                max_side: int = 0, strict: bool = False) -> list[dict]:
    """Run ``processor_factory`` over ``chunks`` on a Ray Data actor pool; returns per-chunk stats."""
    if not chunks:
        return []
    ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    # decoding a chunk takes a fraction of the time an actor spends on it, so two tasks per
    # actor keep the pool fed; more only start more cold worker processes at once
    ds = ds.map_batches(decode_chunk, batch_size=1, num_cpus=0.25,
                        compute=ray.data.TaskPoolStrategy(size=2 * num_actors),   # `concurrency` is deprecated
                        fn_kwargs={"max_side": max_side, "strict": strict})
    ds = ds.map_batches(ChunkActor, batch_size=1, num_cpus=actor_cpus, num_gpus=1 if use_gpu else 0,
                        compute=ray.data.ActorPoolStrategy(size=num_actors),
                        fn_constructor_kwargs={"processor_factory": processor_factory,
                                               "errors_dir": errors_dir, "stage": stage})
    return ds.take_all()


def pending_chunks(chunks: list[dict], output_dir: str) -> list[dict]:
    """Chunks whose output shard is not complete yet (a rerun computes only these)."""
    from wsss_ray.store import list_shards
    fs, path = open_fs(output_dir)
    done = {s.rsplit("/", 1)[1] for s in list_shards(fs, path)}
    return [c for c in chunks if chunk_name(c["chunk_id"]) not in done]
