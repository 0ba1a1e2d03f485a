"""Map extraction on the Ray Data actor pool: CAM, ReCAM (weight variants), LPCAM, InferCam.

Writes ``maps/<name>/part-NNNNN.parquet`` (schema ``store.MAPS_SCHEMA``) and per-chunk
error tables under ``errors/maps_<name>/``. The CAM pass can also sample LPCAM's features
(``feature_sampling``): the images are decoded and the model loaded already, so the prototype
stage reuses the CAM's own scale-1.0 forward instead of a second Ray Data pass.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from wsss_ray.cams.cam import base_batch, network_inputs, strided_size
from wsss_ray.cams.registry import TAKES_BASELINES, build_map_fn
from wsss_ray.config import CamConfig, LPCAMConfig
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir, StaleRunError
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.progress import watched
from wsss_ray.stages.feature_sampling import FEATURE_CHUNK, FeatureSampler, has_samples, with_sample_classes
from wsss_ray.store import MAPS_SCHEMA, decode_maps, join_uri, map_row, open_fs, read_map_rows, write_table_atomic


def pick_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def batches_by_shape(rows: list[dict], images: dict, batch_size: int):
    """Group same-size images (a batch must share H, W), in image_id order, then cut into batches."""
    groups = defaultdict(list)
    for row in rows:
        if row["image_id"] in images:
            groups[images[row["image_id"]].shape[:2]].append(row)
    for shape in sorted(groups):
        members = groups[shape]
        for i in range(0, len(members), batch_size):
            yield members[i:i + batch_size]


class ModelRunner:
    """Loads the classifier once per actor and turns decoded images into network input."""

    def __init__(self, checkpoint_dir: str, use_gpu: bool):
        self.device = pick_device(use_gpu)
        self.model, self.model_cfg, _ = load_classifier(checkpoint_dir)
        self.model.to(self.device)

    def tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        mean, std = self.model_cfg.image_mean, self.model_cfg.image_std
        return network_inputs(images, mean, std, (1.0,), "torch", self.device)    # the scale-1.0 batch

    def inputs(self, images: list[np.ndarray], cam_cfg: CamConfig):
        """The map pass's input: a scale pyramid (``cam_cfg.resample``, ``cams.cam.network_inputs``)."""
        return network_inputs(images, self.model_cfg.image_mean, self.model_cfg.image_std, cam_cfg.scales,
                              cam_cfg.resample, self.device)


class ScaleOneFeatures:
    """Stands in for ``model.features`` during a map call and keeps the backbone output of the
    un-scaled batch (the first ``n`` rows: the flipped copies come after), so LPCAM's sampling
    reuses the CAM's own scale-1.0 forward instead of running another."""

    def __init__(self, features):
        self.inner, self.size, self.n, self.kept = features, None, 0, None

    def expect(self, x: torch.Tensor) -> None:
        self.size, self.n, self.kept = tuple(x.shape[-2:]), x.shape[0], None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.kept is None and tuple(x.shape[-2:]) == self.size and x.shape[0] >= self.n:
            self.kept = out[:self.n]
        return out


class MapProcessor(ModelRunner):
    def __init__(self, checkpoint_dir: str, kind: str, params: dict, cam_cfg: CamConfig, output_dir: str,
                 prototypes_path: str = "", features_dir: str = "", lpcam_cfg: LPCAMConfig | None = None,
                 baseline_dir: str = ""):
        super().__init__(checkpoint_dir, cam_cfg.use_gpu)
        self.baseline_dir = baseline_dir
        params = dict(params, scales=tuple(cam_cfg.scales), flip=cam_cfg.flip)
        if prototypes_path:
            fs, path = open_fs(prototypes_path)
            params["prototypes"] = pq.read_table(path, filesystem=fs)
        self.map_fn = build_map_fn(kind, self.model, params)
        self.cfg = cam_cfg
        self.output_dir = output_dir
        self.sampler = FeatureSampler(features_dir, lpcam_cfg, self.model.backbone.out_channels) \
            if features_dir else None
        self.scale_one = None
        if self.sampler is not None:        # the map functions look model.features up at call time
            self.scale_one = self.model.features = ScaleOneFeatures(self.model.features)
        self.side_seconds = 0.0

    def process(self, chunk_id: int, rows: list[dict], images: dict) -> list:
        out_rows = []
        sampling = self.sampler is not None and has_samples(rows)
        if sampling:
            self.sampler.seconds = 0.0
        # decoded images only: one that failed to decode has no CAM row either, and asking for
        # it would send every such chunk on a scan of the whole directory
        stored = read_map_rows(self.baseline_dir, list(images), chunk_name(chunk_id)) if self.baseline_dir else {}
        for batch in batches_by_shape(rows, images, self.cfg.batch_size):
            h, w = images[batch[0]["image_id"]].shape[:2]
            x = self.inputs([images[r["image_id"]] for r in batch], self.cfg)
            if self.scale_one is not None:
                self.scale_one.expect(base_batch(x))
            out_size = strided_size(h, w, self.cfg.store_stride)
            baselines = self.stored_baselines(batch, stored, out_size)
            extra = {} if baselines is None else {"baselines": baselines}
            maps = self.map_fn(x, [r["labels"] for r in batch], out_size, **extra)
            batch_rows = [map_row(r["image_id"], r["labels"], h, w, m.float().cpu().numpy())
                          for r, m in zip(batch, maps)]
            if sampling:
                self.sample_features(batch, x, batch_rows)
            out_rows += batch_rows
        if sampling:        # before the maps shard, which marks the chunk done for both
            self.sampler.write(chunk_id)
        self.side_seconds = self.sampler.seconds if sampling else 0.0
        out_rows.sort(key=lambda r: r["image_id"])
        fs, path = open_fs(self.output_dir)
        write_table_atomic(pa.Table.from_pylist(out_rows, schema=MAPS_SCHEMA), fs, f"{path}/{chunk_name(chunk_id)}")
        return []

    def stored_baselines(self, batch: list[dict], stored: dict, out_size) -> list[torch.Tensor] | None:
        """The batch's stored baseline maps, or None (the map function infers them) unless every
        image has a row for its labels on this grid."""
        picked = [stored.get(r["image_id"]) for r in batch]
        if not stored or any(p is None or list(p["classes"]) != list(r["labels"])
                             or tuple(p["map_shape"][1:]) != tuple(out_size) for p, r in zip(picked, batch)):
            return None
        return [torch.from_numpy(decode_maps(p["data"], p["map_shape"])).to(self.device) for p in picked]

    def sample_features(self, batch: list[dict], x: torch.Tensor, map_rows: list[dict]) -> None:
        """LPCAM features of the batch's sampled images, split by the CAM just computed, read
        back at storage precision (as the stand-alone stage reads it from the shard)."""
        picked = [j for j, r in enumerate(batch) if r.get("sample_classes")]
        if not picked:
            return
        start = time.perf_counter()
        kept = self.scale_one.kept
        # no scale 1.0 among the CAM's scales: one forward of the sampled images
        feats = kept[picked] if kept is not None else self.scale_one.inner(base_batch(x)[picked])
        self.sampler.seconds += time.perf_counter() - start
        for f, j in zip(feats, picked):
            stored = torch.from_numpy(decode_maps(map_rows[j]["data"], map_rows[j]["map_shape"]))
            self.sampler.add(batch[j]["image_id"], f, map_rows[j]["classes"], stored, batch[j]["sample_classes"])


def extract_maps(run: RunDir, name: str, kind: str, checkpoint: str, cam_cfg: CamConfig,
                 params: dict | None = None, prototypes_path: str = "", chunk_size: int = FEATURE_CHUNK,
                 strict: bool = False, feature_sampling: LPCAMConfig | None = None, baseline: str = "") -> dict:
    """Compute ``kind`` maps for every labelled manifest image not yet in ``maps/<name>``.

    ``feature_sampling`` (CAM maps only): also write LPCAM's sampled features to ``features/``.
    ``baseline`` (InferCam only): a maps directory of the run whose CAM the method would infer
    again (same checkpoint, weight, scales, flip and grid); its stored maps are read instead.
    Without one that matches, the method infers its baseline itself.
    """
    manifest, classes = read_manifest(run.manifest())
    if feature_sampling is not None:
        if chunk_size != FEATURE_CHUNK:
            raise ValueError(f"feature sampling needs chunk_size={FEATURE_CHUNK} (its shards are named by chunk)")
        manifest = with_sample_classes(manifest, classes.num_classes, feature_sampling)
    output_dir = run.uri("maps", name)
    recipe = map_recipe(kind, checkpoint, params, prototypes_path, cam_cfg)
    baseline = usable_baseline(run, baseline, recipe)
    if baseline:
        recipe["baseline"] = baseline       # centres at storage precision: not the same maps bit for bit
    claim_output(run, output_dir, recipe)
    chunks = plan_chunks(manifest, chunk_size)
    todo = pending_chunks(chunks, output_dir)
    start = time.perf_counter()
    sampling = {"features_dir": run.uri("features"), "lpcam_cfg": feature_sampling} if feature_sampling else {}
    factory = _Factory(MapProcessor, checkpoint=checkpoint, kind=kind, params=params or {}, cam_cfg=cam_cfg,
                       output_dir=output_dir, prototypes_path=prototypes_path,
                       baseline_dir=run.uri("maps", baseline) if baseline else "", **sampling)
    sizes = {chunk_name(c["chunk_id"]): len(json.loads(c["rows_json"])) for c in chunks}
    with watched(f"maps {name}", manifest.num_rows, lambda: images_done(sizes, output_dir)):
        stats = run_chunked(todo, factory, run.uri("errors", f"maps_{name}"), f"maps_{name}",
                            num_actors=cam_cfg.num_actors, actor_cpus=cam_cfg.actor_cpus, use_gpu=cam_cfg.use_gpu,
                            max_side=cam_cfg.max_side, strict=strict)
    out = {"name": name, "chunks_total": len(chunks), "chunks_run": len(todo),
           "images": int(sum(s["num_images"] for s in stats)),
           "errors": int(sum(s["num_errors"] for s in stats)),
           "seconds": time.perf_counter() - start,
           "nodes": len({s["node_id"] for s in stats})}        # how many nodes ran its chunks
    if feature_sampling is not None:
        out["feature_sampling_seconds"] = float(sum(s["side_seconds"] for s in stats))
    if kind in TAKES_BASELINES:
        out["baseline"] = baseline or "inferred"
    return out


def images_done(sizes: dict[str, int], output_dir: str) -> int:
    """Images of the chunks whose shard is written (the progress bar's count); ``sizes``: shard
    name -> images in its chunk."""
    from wsss_ray.store import list_shards
    fs, path = open_fs(output_dir)
    return sum(sizes.get(shard.rsplit("/", 1)[1], 0) for shard in list_shards(fs, path))


# what a CAM directory's values depend on that a baseline inferred again would also depend on
BASELINE_KEYS = ("checkpoint", "scales", "flip", "store_stride", "max_side", "resample")


def usable_baseline(run: RunDir, name: str, recipe: dict) -> str:
    """``name`` if ``maps/<name>`` holds the very CAM a ``recipe`` map would infer as its
    baseline, else "" (say, CAM maps of another checkpoint or weight variant)."""
    if not name:
        return ""
    if recipe["kind"] not in TAKES_BASELINES:
        raise ValueError(f"map method {recipe['kind']!r} takes no baseline maps (only {sorted(TAKES_BASELINES)})")
    path = join_uri(run.uri("maps", name), "_recipe.json")
    if not run.exists(path):
        return ""
    stored = run.read_json(path)
    same = stored.get("kind") == "cam" and all(stored.get(k) == recipe[k] for k in BASELINE_KEYS)
    variant = (stored.get("params") or {}).get("variant", "w") == recipe["params"].get("variant", "w")
    return name if same and variant else ""


def file_digest(uri: str) -> str:
    """SHA-256 of a (small) file, "" for none: prototypes selected again with other mu_f or
    fall-back keep their name, so the name alone would let a rerun resume stale maps."""
    if not uri:
        return ""
    fs, path = open_fs(uri)
    with fs.open_input_stream(path) as f:
        return hashlib.sha256(f.read()).hexdigest()


def map_recipe(kind: str, checkpoint: str, params: dict | None, prototypes_path: str, cam_cfg: CamConfig) -> dict:
    """What the values in a maps directory depend on. Checkpoint and prototypes go by base name,
    so a run directory can move (local path, file://, s3://) and still resume."""
    def base(uri: str) -> str:
        return uri.rstrip("/").rsplit("/", 1)[-1] if uri else ""
    return {"kind": kind, "checkpoint": base(checkpoint), "prototypes": base(prototypes_path),
            "prototypes_sha256": file_digest(prototypes_path),
            "params": json.loads(json.dumps(params or {}, sort_keys=True, default=str)),
            "scales": list(cam_cfg.scales), "flip": cam_cfg.flip, "store_stride": cam_cfg.store_stride,
            "max_side": cam_cfg.max_side, "resample": cam_cfg.resample}


def claim_output(run: RunDir, output_dir: str, recipe: dict) -> None:
    """Resume only what was started with the same recipe: a rerun with other options (say
    ``--infercam erase=union``) would otherwise keep the old shards and mix two methods."""
    path = join_uri(output_dir, "_recipe.json")          # '_': Parquet readers skip it
    if not run.exists(path):
        run.write_json(path, recipe)
        return
    old = run.read_json(path)
    if old != recipe:
        changed = {k: (old.get(k), recipe.get(k)) for k in sorted(set(old) | set(recipe)) if old.get(k) != recipe.get(k)}
        raise StaleRunError(f"{output_dir} holds maps made with another recipe (was, now): {changed}. "
                         f"Use another run directory, or delete {output_dir} to recompute it.")


class _Factory:
    """A picklable zero-argument constructor for a processor (built inside each actor)."""

    def __init__(self, cls, **kwargs):
        self.cls, self.kwargs = cls, kwargs

    def __call__(self):
        kw = dict(self.kwargs)
        if "checkpoint" in kw:
            kw["checkpoint_dir"] = kw.pop("checkpoint")
        return self.cls(**kw)
