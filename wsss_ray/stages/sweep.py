"""Hyperparameter sweeps on Ray Tune, reusing a finished run's artifacts.

Post-processing sweep (LPCAM's tau, K, mu_f, mu_b_low, mu_b_high; every trial scores the
whole threshold grid at once): the backbone never runs inside a trial. One pass over the
images (the chunked actor pool every stage uses) writes a feature cache:

  sweeps/_cache/fused/part-NNNNN.parquet   per image and scale: the flip-fused features
                                            f(x) + flip(f(flip x)) that LPCAM maps use
  sweeps/_cache/split/part-NNNNN.parquet   per image: scale-1.0 unflipped features and
                                            the image's stored CAM resampled to their grid
                                            (re-split into fg/context at any tau)
  sweeps/_cache/centres/<key>.parquet      k-means centres per (tau, K, ...): trials that
                                            share them skip the clustering
  sweeps/_cache/info.json                  what made the cache, its bytes

A trial splits by its tau, clusters per class (its K), selects prototypes (its mu), makes
maps from the cached fused features (the very functions of ``cams.lpcam``,
``cams.clustering`` and ``cams.prototypes`` that the prototype stage and the map
extraction call), evaluates them
chunk by chunk and reports to Tune after each chunk, so ASHA can stop a bad trial early.

Training sweep (ReCAM lambda, lr_fc2): each trial trains through ``train_classifier`` (a
TorchTrainer, Ray Train V2, launched from inside the Tune function), extracts w*w' maps and
evaluates them.

Fair protocol: ``evaluate_fair`` (and every sweep) scores the papers' protocol (threshold
chosen on the images it is reported on) next to a selection/report split
(``wsss_ray.selection``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from wsss_ray.cams.cam import fuse_flips, scaled_batch, strided_size, with_flips
from wsss_ray.cams.clustering import CONTEXT, FG, cluster_points
from wsss_ray.cams.lpcam import PrototypeBank, cam_on_feature_grid, lpcam_from_features, split_image
from wsss_ray.config import (CamConfig, EvalConfig, LPCAMConfig, ModelConfig, TrainConfig, from_dict, recam_model,
                             to_dict)
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.selection import FairAccumulator, fair_protocol, split_selection_report, sweep_summary
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.evaluate import image_confusions, save_figure
from wsss_ray.stages.extract import ModelRunner, _Factory, batches_by_shape
from wsss_ray.stages.feature_sampling import FEATURE_CHUNK, sample_images, sampling_order
from wsss_ray.stages.prototypes import centres_table, select_prototypes
from wsss_ray.store import (decode_maps, encode_maps, join_uri, list_shards, map_row, open_fs, read_table_uri,
                            write_table_atomic, write_table_uri)

KNOBS = ("tau", "k", "mu_f", "mu_b_low", "mu_b_high")
FUSED_SCHEMA = pa.schema([("image_id", pa.int64()), ("scale_index", pa.int32()), ("shape", pa.list_(pa.int32())),
                          ("data", pa.binary())])
SPLIT_SCHEMA = pa.schema([("image_id", pa.int64()), ("classes", pa.list_(pa.int32())), ("height", pa.int32()),
                          ("width", pa.int32()), ("feat_shape", pa.list_(pa.int32())), ("feat", pa.binary()),
                          ("cam_classes", pa.list_(pa.int32())), ("cam", pa.binary())])


# ----------------------------------------------------------------------------- run config

def run_config(run: RunDir) -> dict:
    """The pipeline config the run was made with (``config.json``), as typed configs."""
    raw = run.read_json(run.uri("config.json"))
    subset = raw["dataset"].get("class_subset")
    dataset = raw["dataset"]["kind"] + (f":{subset}" if subset else "")      # as the pipeline names it
    return {"cam": from_dict(CamConfig, raw["cam"]), "lpcam": from_dict(LPCAMConfig, raw["lpcam"]),
            "eval": from_dict(EvalConfig, raw["eval"]), "model": from_dict(ModelConfig, raw["model"]),
            "recam_train": from_dict(TrainConfig, raw["recam_train"]), "dataset": dataset,
            "recam_unfreeze": bool(raw.get("recam_unfreeze", False))}


def evaluable_images(run: RunDir) -> tuple[list[int], list[list[int]], dict[int, str]]:
    """Labelled images with a GT mask: (ids, label sets, id -> mask uri)."""
    manifest, _ = read_manifest(run.manifest())
    ids, labels, masks = [], [], {}
    for r in manifest.select(["image_id", "labels", "mask_uri"]).to_pylist():
        if r["labels"] and r["mask_uri"]:
            ids.append(int(r["image_id"]))
            labels.append(list(r["labels"]))
            masks[int(r["image_id"])] = r["mask_uri"]
    return ids, labels, masks


# ----------------------------------------------------------------------------- feature cache

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

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(flip-fused features per scale, scale-1.0 unflipped features) of a batch."""
        per_scale, plain = [], None
        for s in self.cfg.scales:
            raw = self.model.features(with_flips(scaled_batch(x, s), self.cfg.flip))
            if s == 1.0:        # its unflipped half is model.features(x): no extra forward
                plain = raw[:x.shape[0]]
            per_scale.append(fuse_flips(raw, self.cfg.flip))
        if plain is None:
            plain = self.model.features(x)      # the call the LPCAM feature stage makes
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
            per_scale, plain = self.features(self.tensor([images[r["image_id"]] for r in batch]))
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
    fields = {k: getattr(cfg, k) for k in ("tau", "k", "kmeans_iters", "seed", "images_per_class",
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


def trial_lpcam_config(base: dict, config: dict) -> LPCAMConfig:
    knobs = {k: (int(config[k]) if k == "k" else float(config[k])) for k in KNOBS if k in config}
    return dataclasses.replace(from_dict(LPCAMConfig, base), **knobs)


def lpcam_trial(config: dict, ctx: dict) -> None:
    """One post-processing trial: prototypes for its knobs, then maps + evaluation chunk by
    chunk, reporting cumulative scores to Tune after each chunk."""
    import faiss
    from ray import tune
    torch.set_num_threads(ctx["threads"])
    faiss.omp_set_num_threads(ctx["threads"])
    run = RunDir(ctx["run_dir"])
    cfg = trial_lpcam_config(ctx["base_lpcam"], config)
    start, cpu_start = time.perf_counter(), time.process_time()
    bank = trial_bank(run, cfg)
    prototypes_s = time.perf_counter() - start
    meta, acc = image_meta(run), FairAccumulator(ctx["thresholds"], ctx["num_classes"], set(ctx["selection"]))
    masks, done = ctx["masks"], 0
    for image_id, fused in iter_cached_images(run, set(masks), ctx["order_seed"], ctx["fused_dtype"]):
        m = meta[image_id]
        maps = lpcam_from_fused(fused, bank, m["classes"], strided_size(m["height"], m["width"], ctx["stride"]),
                                cfg.fg_only)
        # the row a run would store, scored by the evaluation stage's own per-image function
        row = map_row(image_id, m["classes"], m["height"], m["width"], maps.numpy())
        acc.add(image_id, image_confusions(row, masks[image_id], ctx["num_classes"], ctx["thresholds"]))
        done += 1
        if done % ctx["report_every"] == 0 or done == len(masks):
            tune.report(dict(acc.metrics(), complete=done == len(masks), prototypes_s=prototypes_s,
                             cpu_s=time.process_time() - cpu_start))


# ----------------------------------------------------------------------------- search spaces

RANDOM_SPACE = {"tau": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4], "k": [4, 6, 8, 12, 16, 20],
                "mu_f": (0.5, 0.97), "mu_b_low": (0.0, 0.2), "mu_b_high": (0.4, 0.95)}
GRID_SPACE = {"tau": [0.1, 0.25], "k": [8, 12], "mu_f": [0.8, 0.9], "mu_b_low": [0.05], "mu_b_high": [0.5, 0.9]}


def search_space(kind: str, base: dict, grid: dict | None = None) -> dict:
    """tau and K are discrete (trials that share them share the clustering); the mu are
    continuous ranges for random / optuna, lists for grid. A knob a grid leaves out stays
    at the run's own value."""
    from ray import tune
    if kind == "grid":
        values = {k: [base[k]] for k in KNOBS} | (grid or GRID_SPACE)
        return {k: tune.grid_search(list(v)) for k, v in values.items()}
    return {k: tune.choice(v) if isinstance(v, list) else tune.uniform(*v) for k, v in RANDOM_SPACE.items()}


def make_search(kind: str, metric: str, seed: int, baseline: dict | None, max_concurrent: int):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator
    points = [baseline] if baseline else None
    if kind == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        return ConcurrencyLimiter(OptunaSearch(metric=metric, mode="max", points_to_evaluate=points, seed=seed),
                                  max_concurrent=max_concurrent)
    if kind in ("random", "grid"):
        return BasicVariantGenerator(points_to_evaluate=points, random_state=seed, max_concurrent=max_concurrent)
    raise ValueError(f"unknown search {kind!r}: random | grid | optuna")


def make_scheduler(kind: str, max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    if kind == "asha":
        # rungs at grace * 2^i below max_t: with 8 reports a trial is judged after 1/4 and 1/2 of
        # the images, and one that passes both runs to the end (no rung just short of it)
        return ASHAScheduler(time_attr="training_iteration", max_t=max(1, max_t), grace_period=max(1, max_t // 4),
                             reduction_factor=2)
    if kind == "fifo":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {kind!r}: asha | fifo")


def logger_callbacks(storage: str, name: str) -> list:
    """MLflow when installed (TensorBoard, CSV and JSON are Tune's defaults)."""
    if importlib.util.find_spec("mlflow") is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    uri = storage if "://" in storage else f"file://{storage}"
    return [MLflowLoggerCallback(tracking_uri=join_uri(uri, "mlruns"), experiment_name=name, save_artifact=False)]


def storage_root(run: RunDir) -> str:
    return run.uri("sweeps")


# ----------------------------------------------------------------------------- results

def result_rows(grid, knobs) -> list[dict]:
    rows = []
    for res in grid:
        m = res.metrics or {}
        row = {"trial_id": m.get("trial_id", ""), **{k: res.config.get(k) for k in knobs}}
        for key in ("miou", "best_threshold", "sel_miou", "sel_threshold", "report_miou", "images", "complete",
                    "training_iteration", "time_total_s", "cpu_s"):
            row[key] = m.get(key)
        row["error"] = str(res.error)[:300] if res.error else ""
        row["trial_dir"] = res.path
        rows.append(row)
    return rows


def write_results(run: RunDir, name: str, rows: list[dict], summary: dict, knobs) -> None:
    import pandas as pd
    frame = pd.DataFrame(rows)
    run.write_text(run.uri("sweeps", name, "results.csv"), frame.to_csv(index=False))
    write_table_uri(pa.Table.from_pandas(frame, preserve_index=False), run.uri("sweeps", name, "results.parquet"))
    run.write_json(run.uri("sweeps", name, "summary.json"), summary)
    for knob in knobs:
        plot_knob(rows, knob, run.uri("sweeps", name, f"miou_vs_{knob}.png"))


def plot_knob(rows: list[dict], knob: str, png_path: str) -> None:
    """Final mIoU against one knob; hollow markers are trials the scheduler stopped early."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
    for complete, style in ((True, {"marker": "o"}), (False, {"marker": "o", "facecolors": "none"})):
        pts = [(r[knob], r["miou"]) for r in rows if r.get("miou") is not None and bool(r.get("complete")) == complete]
        if pts:
            ax.scatter(*zip(*pts), edgecolors="C0", label="complete" if complete else "stopped early", **style)
    ax.set_xlabel(knob)
    ax.set_ylabel("mIoU (best threshold)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png_path)


# ----------------------------------------------------------------------------- post-processing sweep

def start_ray(dashboard: bool = False) -> None:
    """A local session (dashboard on http://127.0.0.1:8265 when asked), or the cluster of
    RAY_ADDRESS; through ``ensure_ray`` so every job starts Ray the same way."""
    from wsss_ray.stages.session import ensure_ray
    if dashboard:
        os.environ["WSSS_RAY_DASHBOARD"] = "1"      # ensure_ray's switch for the dashboard
    ensure_ray()


def absolute_root(run: RunDir) -> str:
    return run.root if "://" in run.root else os.path.abspath(run.root)


def lpcam_trial_context(run: RunDir, cfg: dict, cache: dict, reports: int, seed: int, selection_fraction: float,
                        cpus_per_trial: float) -> dict:
    """What every trial needs besides its knobs (small: paths, ids, the threshold grid)."""
    ids, labels, masks = evaluable_images(run)
    held = image_meta(run)
    masks = {i: m for i, m in masks.items() if i in held}          # evaluable images the cache holds
    kept = [(i, lab) for i, lab in zip(ids, labels) if i in masks]
    selection, _ = split_selection_report([i for i, _ in kept], [lab for _, lab in kept], selection_fraction, seed)
    _, classes = read_manifest(run.manifest())
    return {"run_dir": absolute_root(run), "base_lpcam": to_dict(cfg["lpcam"]),
            "thresholds": list(cfg["eval"].thresholds),
            "num_classes": classes.num_classes, "selection": selection, "masks": masks,
            "stride": cfg["cam"].store_stride, "report_every": -(-len(masks) // max(1, reports)),
            "order_seed": seed, "fused_dtype": cache["fused_dtype"], "threads": max(1, math.floor(cpus_per_trial))}


def run_lpcam_sweep(run_dir: str, num_samples: int = 20, search: str = "random", scheduler: str = "asha",
                    name: str = "", cpus_per_trial: float = 0.5, max_concurrent: int = 2, reports: int = 8,
                    seed: int = 0, selection_fraction: float = 0.5, metric: str = "miou", baseline: bool = True,
                    grid: dict | None = None, fused_dtype: str = "float16") -> dict:
    """LPCAM post-processing sweep over ``KNOBS`` on a finished run's cached artifacts."""
    from ray import tune
    run, cfg, start = RunDir(run_dir), run_config(RunDir(run_dir)), time.perf_counter()
    name = name or f"lpcam_{search}_{scheduler}"
    cache = {k: v for k, v in build_feature_cache(run, fused_dtype).items() if k != "key"}
    timings = {"cache_s": time.perf_counter() - start}
    ctx = lpcam_trial_context(run, cfg, cache, reports, seed, selection_fraction, cpus_per_trial)
    base = {k: getattr(cfg["lpcam"], k) for k in KNOBS}
    # a grid defines its trials itself; elsewhere the run's own config is the first trial
    first = base if baseline and search != "grid" else None
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(lpcam_trial, ctx=ctx), {"cpu": cpus_per_trial}),
        param_space=search_space(search, base, grid),
        tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=1 if search == "grid" else num_samples,
                                    search_alg=make_search(search, metric, seed, first, max_concurrent),
                                    scheduler=make_scheduler(scheduler, -(-len(ctx["masks"]) // ctx["report_every"]))),
        run_config=tune.RunConfig(name=name, **run.ray_storage("sweeps"), verbose=1,
                                  callbacks=logger_callbacks(storage_root(run), name)))
    start = time.perf_counter()
    rows = result_rows(tuner.fit(), KNOBS)
    timings["trials_s"] = time.perf_counter() - start
    summary = dict(sweep_summary(rows), timings_s=timings, cache=cache, search=search, scheduler=scheduler,
                   metric=metric, images=len(ctx["masks"]), selection_images=len(ctx["selection"]), baseline=base)
    write_results(run, name, rows, summary, KNOBS)
    return summary


# ----------------------------------------------------------------------------- training sweep

def _subsets_of_batch(batch: dict, masks: dict, num_classes: int, thresholds, selection: set, report: set) -> dict:
    """One map batch -> confusions of its selection images and of its report images."""
    from wsss_ray.stages.evaluate import confusions_of_batch
    sel = confusions_of_batch(batch, masks, num_classes, thresholds, selection)
    rep = confusions_of_batch(batch, masks, num_classes, thresholds, report)
    return {"selection": sel["confusion"], "report": rep["confusion"],
            "n_selection": sel["count"], "n_report": rep["count"]}


def subset_confusions(run: RunDir, method: str, thresholds, selection: set[int]) -> tuple:
    """Selection and report confusions of ``maps/<method>`` in one Ray Data pass, with the
    evaluation stage's per-image maths."""
    import ray
    ids, _, masks = evaluable_images(run)
    _, classes = read_manifest(run.manifest())
    fs, path = open_fs(run.uri("maps", method))
    shards = list_shards(fs, path)
    if not shards:
        raise FileNotFoundError(f"no map shards under {run.uri('maps', method)}: run the extraction first")
    t, k = len(thresholds), classes.num_classes + 1
    ds = ray.data.read_parquet(shards, filesystem=fs, override_num_blocks=min(len(shards), 64))
    ds = ds.map_batches(_subsets_of_batch, batch_size=16, batch_format="numpy", num_cpus=0.5,
                        fn_kwargs={"masks": masks, "num_classes": classes.num_classes, "thresholds": list(thresholds),
                                   "selection": set(selection), "report": set(ids) - set(selection)})
    out = {"selection": np.zeros((t, k, k), np.int64), "report": np.zeros((t, k, k), np.int64),
           "n_selection": 0, "n_report": 0}
    for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key in ("selection", "report"):
            out[key] += part[key].sum(0).reshape(t, k, k)
            out[f"n_{key}"] += int(part[f"n_{key}"].sum())
    return out["selection"], out["report"], out["n_selection"], out["n_report"]


def local_fair_confusions(run: RunDir, method: str, thresholds, selection: set[int]) -> FairAccumulator:
    """Selection / report confusions of ``maps/<method>`` in this process (the evaluation
    stage's per-image maths): a trial is already one parallel unit, and a Ray Data pass
    per subset would cost more in start-up than the arithmetic on a small run."""
    _, _, masks = evaluable_images(run)
    _, classes = read_manifest(run.manifest())
    acc = FairAccumulator(thresholds, classes.num_classes, selection)
    fs, path = open_fs(run.uri("maps", method))
    for shard in list_shards(fs, path):
        for row in pq.read_table(shard, filesystem=fs).to_pylist():
            if row["image_id"] in masks:
                acc.add(row["image_id"], image_confusions(row, masks[row["image_id"]], classes.num_classes, thresholds))
    return acc


def recam_trial(config: dict, ctx: dict) -> None:
    """One ReCAM trial: train (TorchTrainer) from the CAM checkpoint, w*w' maps, evaluate."""
    from ray import tune
    from wsss_ray.stages.extract import extract_maps
    from wsss_ray.stages.train import train_classifier
    run, cfg = RunDir(ctx["run_dir"]), run_config(RunDir(ctx["run_dir"]))
    name = f"recam_trial_{tune.get_context().get_trial_id()}"
    train = dataclasses.replace(cfg["recam_train"], recam_lambda=float(config["recam_lambda"]),
                                lr_fc2=float(config["lr_fc2"]), **ctx["train_overrides"])
    start = time.perf_counter()
    info = train_classifier(run, name, recam_model(cfg["model"], cfg["recam_unfreeze"]), train,
                            init_from=run.uri("checkpoints", "cam"))
    train_s = time.perf_counter() - start
    extract_maps(run, name, "cam", run.uri("checkpoints", name), cfg["cam"], {"variant": "w*w'"})
    acc = local_fair_confusions(run, name, list(cfg["eval"].thresholds), set(ctx["selection"]))
    tune.report(dict(acc.metrics(), complete=True, train_loss=float(info.get("loss", float("nan"))),
                     train_s=train_s, seconds=time.perf_counter() - start))


RECAM_SPACE = {"recam_lambda": [0.05, 0.1, 0.3, 1.0, 3.0], "lr_fc2": (1e-4, 5e-3)}


def run_recam_sweep(run_dir: str, num_samples: int = 4, name: str = "recam", epochs: int = 0,
                    num_workers: int = 0, cpus_per_trial: float = 0.5, max_concurrent: int = 1,
                    seed: int = 0, selection_fraction: float = 0.5, space: dict | None = None) -> dict:
    """ReCAM training sweep: one TorchTrainer per trial, maps and checkpoints in the run dir."""
    from ray import tune
    run = RunDir(run_dir)
    overrides = {k: v for k, v in {"epochs": epochs, "num_workers": num_workers}.items() if v}
    ids, labels, _ = evaluable_images(run)
    selection, _ = split_selection_report(ids, labels, selection_fraction, seed)
    ctx = {"run_dir": absolute_root(run), "train_overrides": overrides,
           "selection": selection}
    space = space or RECAM_SPACE
    param_space = {k: tune.choice(v) if isinstance(v, list) else tune.loguniform(*v) for k, v in space.items()}
    # the trial function only waits on its trainer, whose workers hold their own CPUs
    trainable = tune.with_resources(tune.with_parameters(recam_trial, ctx=ctx), {"cpu": cpus_per_trial})
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric="miou", mode="max", num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent,
                                    search_alg=make_search("random", "miou", seed, None, max_concurrent)),
        run_config=tune.RunConfig(name=name, **run.ray_storage("sweeps"), verbose=1,
                                  callbacks=logger_callbacks(storage_root(run), name)))
    start = time.perf_counter()
    results = tuner.fit()
    rows = result_rows(results, tuple(space))
    summary = dict(sweep_summary(rows), timings_s={"trials_s": time.perf_counter() - start},
                   selection_images=len(selection), images=len(ids))
    write_results(run, name, rows, summary, tuple(space))
    return summary


# ----------------------------------------------------------------------------- fair evaluation

def evaluate_fair(run: RunDir, method: str, cfg: EvalConfig | None = None, selection_fraction: float = 0.5,
                  seed: int = 0) -> dict:
    """``eval/<method>_fair.json``: the threshold chosen on a selection subset and mIoU
    reported on the disjoint report subset, next to the papers' protocol (all images)."""
    thresholds = list((cfg or run_config(run)["eval"]).thresholds)
    ids, labels, _ = evaluable_images(run)
    selection, _ = split_selection_report(ids, labels, selection_fraction, seed)
    sel, rep, n_sel, n_rep = subset_confusions(run, method, thresholds, set(selection))
    result = dict(fair_protocol(thresholds, sel, rep, n_sel, n_rep), method=method, seed=seed,
                  selection_fraction=selection_fraction)     # the split is reproducible from seed + fraction
    run.write_json(run.uri("eval", f"{method}_fair.json"), result)
    return result
