"""The LPCAM sweep's feature cache and the trial maths on it: the backbone runs once per run,
never inside a trial.

One pass over the images (the chunked actor pool every stage uses) writes:

  sweeps/_cache/fused/part-NNNNN.parquet   per image and scale: the flip-fused features
                                            f(x) + flip(f(flip x)) that LPCAM maps use
  sweeps/_cache/split/part-NNNNN.parquet   per image: scale-1.0 unflipped features and
                                            the image's stored CAM resampled to their grid
                                            (re-split into fg/context at any tau)
  sweeps/_cache/centres/<key>.parquet      k-means centres per (tau, K, ...): trials that
                                            share them skip the clustering
  sweeps/_cache/info.json                  what made the cache, its bytes

A trial's maps come from the very functions of ``cams.lpcam``, ``cams.clustering`` and
``cams.prototypes`` that the prototype stage and the map extraction call.
"""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from wsss_ray.cams.cam import base_batch, fuse_flips, scaled_batch, strided_size, with_flips
from wsss_ray.cams.clustering import CONTEXT, FG, cluster_points
from wsss_ray.cams.lpcam import PrototypeBank, cam_on_feature_grid, lpcam_from_features, split_image
from wsss_ray.config import CamConfig, LPCAMConfig, to_dict
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir, run_config
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.extract import ModelRunner, _Factory, batches_by_shape
from wsss_ray.stages.feature_sampling import FEATURE_CHUNK, sample_images, sampling_order
from wsss_ray.stages.prototypes import centres_table, select_prototypes
from wsss_ray.store import (decode_maps, encode_maps, list_shards, open_fs, read_table_uri, write_table_atomic,
                            write_table_uri)

FUSED_SCHEMA = pa.schema([("image_id", pa.int64()), ("scale_index", pa.int32()), ("shape", pa.list_(pa.int32())),
                          ("data", pa.binary())])
SPLIT_SCHEMA = pa.schema([("image_id", pa.int64()), ("classes", pa.list_(pa.int32())), ("height", pa.int32()),
                          ("width", pa.int32()), ("feat_shape", pa.list_(pa.int32())), ("feat", pa.binary()),
                          ("cam_classes", pa.list_(pa.int32())), ("cam", pa.binary())])


def cache_uri(run: RunDir, *parts: str) -> str:
    return run.uri("sweeps", "_cache", *parts)


def _bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def _feature_grid_cams(cam_row: dict, h: int, w: int) -> np.ndarray:
    """The stored CAM at the feature grid (as the split resamples it), kept as the same uint8
    levels: the split at any tau is unchanged."""
    maps = torch.from_numpy(decode_maps(cam_row["data"], cam_row["map_shape"]))
    grid = cam_on_feature_grid(maps, (h, w))
    return np.frombuffer(encode_maps(grid.numpy()), np.uint8).reshape(grid.shape)


def read_cams(cam_dir: str, image_ids: list[int]) -> dict[int, dict]:
    """The stored CAM rows of some images."""
    fs, path = open_fs(cam_dir)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(filter=pads.field("image_id").isin(image_ids))
    return {r["image_id"]: r for r in table.to_pylist()}


def to_stored_dtype(features: torch.Tensor, dtype: np.dtype) -> bytes:
    f = features.float().cpu().numpy()
    if dtype.kind == "f":
        limit = np.finfo(dtype).max
        f = np.clip(f, -limit, limit)           # a float16 overflow would become inf
    return _bytes(f.astype(dtype))


class SweepCacheProcessor(ModelRunner):
    """Per chunk: flip-fused features at every scale + scale-1.0 features with the CAM."""

    def __init__(self, checkpoint_dir: str, cam_dir: str, output_dir: str, cam_cfg: CamConfig, fused_dtype: str):
        super().__init__(checkpoint_dir, cam_cfg.use_gpu)
        self.cam_dir, self.output_dir, self.cfg = cam_dir, output_dir, cam_cfg
        self.fused_dtype = np.dtype(fused_dtype)

    def features(self, x) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(flip-fused features per scale, scale-1.0 unflipped features) of a batch (a tensor or
        a ``ScalePyramid``, as the map pass takes it)."""
        per_scale, plain = [], None
        for s in self.cfg.scales:
            raw = self.model.features(with_flips(scaled_batch(x, s), self.cfg.flip))
            if s == 1.0:        # its unflipped half is model.features(x): no extra forward
                plain = raw[:base_batch(x).shape[0]]
            per_scale.append(fuse_flips(raw, self.cfg.flip))
        if plain is None:
            plain = self.model.features(base_batch(x))      # the call the LPCAM feature stage makes
        return per_scale, plain

    def rows(self, row: dict, size: tuple, per_scale: list, plain: torch.Tensor, cam_row: dict):
        fused = [{"image_id": row["image_id"], "scale_index": s, "shape": list(f.shape),
                  "data": to_stored_dtype(f, self.fused_dtype)} for s, f in enumerate(per_scale)]
        grid = _feature_grid_cams(cam_row, plain.shape[1], plain.shape[2])
        split = {"image_id": row["image_id"], "classes": list(row["labels"]), "height": size[0], "width": size[1],
                 "feat_shape": list(plain.shape), "feat": to_stored_dtype(plain, np.dtype(np.float32)),
                 "cam_classes": list(cam_row["classes"]), "cam": _bytes(grid)}
        return fused, split

    def process(self, chunk_id: int, rows: list[dict], images: dict) -> list:
        cams = read_cams(self.cam_dir, [r["image_id"] for r in rows])
        fused, split, errors = [], [], []
        for batch in batches_by_shape(rows, images, self.cfg.batch_size):
            per_scale, plain = self.features(self.inputs([images[r["image_id"]] for r in batch], self.cfg))
            size = images[batch[0]["image_id"]].shape[:2]
            for i, row in enumerate(batch):
                if row["image_id"] not in cams:
                    errors.append((str(row["image_id"]), "no CAM for this image: run CAM extraction first"))
                    continue
                f, sp = self.rows(row, size, [p[i] for p in per_scale], plain[i], cams[row["image_id"]])
                fused += f
                split.append(sp)
        fs, path = open_fs(self.output_dir)
        write_table_atomic(pa.Table.from_pylist(fused, schema=FUSED_SCHEMA), fs, f"{path}/fused/{chunk_name(chunk_id)}")
        # the split shard is written last: it marks the chunk complete
        write_table_atomic(pa.Table.from_pylist(split, schema=SPLIT_SCHEMA), fs, f"{path}/split/{chunk_name(chunk_id)}")
        return errors


def _cache_key(run: RunDir, cam_cfg: CamConfig, fused_dtype: str) -> dict:
    fs, path = open_fs(run.uri("checkpoints", "cam", "model.pt"))
    info = fs.get_file_info(path)
    key = {"checkpoint_bytes": info.size, "checkpoint_mtime_ns": info.mtime_ns, "cam": to_dict(cam_cfg),
           "fused_dtype": fused_dtype, "chunk_size": FEATURE_CHUNK}
    return json.loads(json.dumps(key))          # as info.json will hold it (tuples become lists)


def _dir_bytes(uri: str) -> int:
    fs, path = open_fs(uri)
    return int(sum(fs.get_file_info(s).size for s in list_shards(fs, path)))


def build_feature_cache(run: RunDir, fused_dtype: str = "float16") -> dict:
    """Build (or resume, or reuse) ``sweeps/_cache``: the only backbone pass of a sweep."""
    cfg = run_config(run)["cam"]
    key = _cache_key(run, cfg, fused_dtype)
    info_path = run.uri("sweeps", "_cache", "info.json")
    if run.exists(info_path):
        old = run.read_json(info_path)
        if old.get("key") != key:
            raise RuntimeError(f"{cache_uri(run)} was built from another checkpoint or CAM config: delete it")
        if old.get("complete"):
            return dict(old, reused=True)
    run.write_json(info_path, {"key": key, "complete": False})
    manifest, _ = read_manifest(run.manifest())
    chunks = plan_chunks(manifest, FEATURE_CHUNK)
    todo = pending_chunks(chunks, cache_uri(run, "split"))
    start = time.perf_counter()
    factory = _Factory(SweepCacheProcessor, checkpoint=run.uri("checkpoints", "cam"),
                       cam_dir=run.uri("maps", "cam"), output_dir=cache_uri(run), cam_cfg=cfg, fused_dtype=fused_dtype)
    stats = run_chunked(todo, factory, run.uri("errors", "sweep_cache"), "sweep_cache", num_actors=cfg.num_actors,
                        actor_cpus=cfg.actor_cpus, use_gpu=cfg.use_gpu, max_side=cfg.max_side)
    info = {"key": key, "complete": True, "chunks_run": len(todo), "seconds": time.perf_counter() - start,
            "images": len(image_meta(run)), "errors": int(sum(s["num_errors"] for s in stats)),
            "fused_dtype": fused_dtype,
            "bytes_fused": _dir_bytes(cache_uri(run, "fused")), "bytes_split": _dir_bytes(cache_uri(run, "split"))}
    run.write_json(info_path, info)
    return dict(info, reused=False)



# ----------------------------------------------------------------------------- trial maths

def read_split(run: RunDir) -> dict[int, dict]:
    """image_id -> scale-1.0 features (D,h,w) float32, grid CAMs, labels, decoded size."""
    fs, path = open_fs(cache_uri(run, "split"))
    out = {}
    for shard in list_shards(fs, path):
        for r in pq.read_table(shard, filesystem=fs).to_pylist():
            r["feat"] = np.frombuffer(r["feat"], np.float32).reshape(r["feat_shape"]).copy()   # writable for torch
            r["cam"] = decode_maps(r["cam"], [len(r["cam_classes"]), *r["feat_shape"][1:]])
            out[int(r["image_id"])] = r
    return out


def split_points(split: dict[int, dict], sampled: dict[int, list[int]], cfg: LPCAMConfig,
                 manifest_ids) -> dict[int, dict]:
    """Class -> {fg, context} row blocks at the trial's tau, in the feature sampling's order."""
    per_class: dict[int, dict] = {}
    shapes = {i: (split[i]["height"], split[i]["width"]) for i in sampled if i in split}
    for image_id in sampling_order(shapes, manifest_ids):
        row = split[image_id]
        cams = torch.from_numpy(row["cam"])
        for c, fg, ctx in split_image(image_id, torch.from_numpy(row["feat"]), row["cam_classes"], cams,
                                      sampled[image_id], cfg):
            bucket = per_class.setdefault(c, {FG: [], CONTEXT: []})
            bucket[FG].append(fg)
            bucket[CONTEXT].append(ctx)
    return per_class


def centres_key(cfg: LPCAMConfig) -> str:
    """Only these knobs change the clusters; mu_f / mu_b only re-select among them."""
    fields = {k: getattr(cfg, k) for k in ("tau", "k", "kmeans_iters", "kmeans_redo", "seed", "images_per_class",
                                          "max_positions_per_image")}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def trial_centres(run: RunDir, cfg: LPCAMConfig, head: np.ndarray) -> pa.Table:
    """The centres for (tau, K, ...): read from the cache, or clustered once and stored."""
    path = run.uri("sweeps", "_cache", "centres", f"{centres_key(cfg)}.parquet")
    if run.exists(path):
        return read_table_uri(path)
    manifest, classes = read_manifest(run.manifest())
    sampled = sample_images(manifest, classes.num_classes, cfg.images_per_class, cfg.seed)
    per_class = split_points(read_split(run), sampled, cfg, manifest.column("image_id").to_pylist())
    table = centres_table(cluster_points(per_class, classes.num_classes, head.shape[1], cfg), head)
    write_table_uri(table, path)
    return table


def trial_bank(run: RunDir, cfg: LPCAMConfig) -> PrototypeBank:
    """Prototypes for one trial's config: cached centres, then mu_f / mu_b selection."""
    model, _, meta = load_classifier(run.uri("checkpoints", "cam"))
    head = model.head.weight.detach().flatten(1).numpy()
    table, _ = select_prototypes(trial_centres(run, cfg, head), meta["num_classes"], cfg)
    return PrototypeBank.from_table(table, meta["num_classes"])


def lpcam_from_fused(fused: list[torch.Tensor], bank: PrototypeBank, classes, out_size,
                     fg_only: bool = False) -> torch.Tensor:
    """One image's LPCAM maps from its cached flip-fused features (one (D,h,w) tensor per
    scale, in the CAM config's scale order)."""
    return lpcam_from_features((f[None].float() for f in fused), bank, [classes], out_size, fg_only)[0]


def iter_cached_images(run: RunDir, image_ids: set | None = None, seed: int = 0, dtype: str = "float16"):
    """(image_id, [per-scale (D,h,w) tensors]) over the cache, shard by shard in a seeded
    order (so a trial's early reports see a random sample of the images, not the first ids)."""
    fs, path = open_fs(cache_uri(run, "fused"))
    shards = list_shards(fs, path)
    for j in np.random.default_rng(seed).permutation(len(shards)):
        table = pq.read_table(shards[j], filesystem=fs)
        by_image: dict[int, list] = {}
        for r in table.to_pylist():
            if image_ids is None or r["image_id"] in image_ids:
                feats = np.frombuffer(r["data"], np.dtype(dtype)).reshape(r["shape"])
                by_image.setdefault(int(r["image_id"]), []).append((r["scale_index"], feats))
        for image_id in sorted(by_image):
            yield image_id, [torch.from_numpy(f.astype(np.float32)) for _, f in sorted(by_image[image_id])]


def image_meta(run: RunDir) -> dict[int, dict]:
    fs, path = open_fs(cache_uri(run, "split"))
    out = {}
    for shard in list_shards(fs, path):
        for r in pq.read_table(shard, filesystem=fs, columns=["image_id", "classes", "height", "width"]).to_pylist():
            out[int(r["image_id"])] = r
    return out


def sweep_maps(run: RunDir, cfg: LPCAMConfig, image_ids=None) -> dict[int, np.ndarray]:
    """Stored-precision (uint8 / 255) LPCAM maps of ``cfg`` from the cache: the maps a
    trial evaluates (what ``maps/lpcam`` would hold for the same config)."""
    cam_cfg = run_config(run)["cam"]
    bank, meta, out = trial_bank(run, cfg), image_meta(run), {}
    info = run.read_json(run.uri("sweeps", "_cache", "info.json"))
    wanted = None if image_ids is None else set(image_ids)
    for image_id, fused in iter_cached_images(run, wanted, dtype=info.get("fused_dtype", "float16")):
        m = meta[image_id]
        maps = lpcam_from_fused(fused, bank, m["classes"], strided_size(m["height"], m["width"], cam_cfg.store_stride),
                                cfg.fg_only)
        out[image_id] = decode_maps(encode_maps(maps.numpy()), maps.shape)
    return out
