"""Pseudo masks from seed maps (step 4 of the pipeline), on the chunked actor pool.

IRN route (default), per method:
1. confident labels ``conf/<method>/``: seeds at conf_fg and conf_bg, each through the dense CRF;
2. a boundary head on the frozen classifier, trained on Ray Train with the affinity loss from
   confident-label pairs -> ``checkpoints/irn_<method>/``;
3. the sparse random walk of the stride-4 maps on the boundary affinities ->
   ``masks/<method>/``.
CRF route (``refiner="crf"``): seed mask at a threshold + dense CRF -> ``masks/<method>_crf/``.

Mask shards (``MASKS_SCHEMA``): image_id, height, width, png (a mode-L PNG of the uint8 label
mask: 0 background, class id + 1, 255 ignore), one row per image, written per chunk like the
map shards. Each pseudo-mask set is scored against GT with the pipeline's metrics into
``eval/pseudo_<name>.json`` (the same format as ``eval/<method>.json``, one dummy threshold).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch

from wsss_ray.config import ModelConfig, to_dict
from wsss_ray.data.augment import image_at
from wsss_ray.data.images import absolute_root, decode_png, encode_png, load_mask
from wsss_ray.data.manifest import read_manifest
from wsss_ray.data.train_batches import PairBatches
from wsss_ray.models.checkpoint import load_classifier, load_state
from wsss_ray.metrics import full_resolution, gt_at, threshold_confusions
from wsss_ray.refine.crf import CRFParams
from wsss_ray.refine.irn import (BoundaryNet, WalkParams, conf_thresholds, confident_labels, crf_pseudo_mask,
                                 downsample_labels, infer_boundary, irn_loss, rw_pseudo_mask)
from wsss_ray.rundir import RunDir
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.engine import Schedule, TrainTask, epoch_schedule, fit
from wsss_ray.store import decode_maps, list_shards, open_fs, read_rows, write_table_atomic

MASKS_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("png", pa.binary()),             # mode-L PNG: 0 bg, class id + 1, 255 ignore
])


@dataclass(frozen=True)
class RefineConfig:
    refiner: str = "irn"              # irn | crf
    conf_fg: float = -1.0             # < 0: the method's preset (METHODS.md section 4)
    conf_bg: float = -1.0
    crf_threshold: float = -1.0       # crf route; < 0: the best seed threshold in eval/<method>.json
    crf_max_sources: int = 1024       # bilateral sources per image (refine/crf.py)
    # boundary head (IRN: 3 epochs, batch 32, lr 0.1, crop 512, radius 10)
    epochs: int = 3
    batch_size: int = 32              # global batch
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    resize_long: tuple = (320, 640)
    crop_size: int = 512              # 0 = whole images (padded to the batch's largest)
    hflip: bool = True
    train_radius: int = 10            # in cells of the boundary grid
    net_stride: int = 4               # boundary / walk grid (IRN: 4; the 112 px demo: 2)
    # random walk
    walk_radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    bg_threshold: float = 0.25        # < 0: the method's best seed threshold (eval/<method>.json)
    cam_power: float = 1.0
    # execution
    num_workers: int = 2
    num_actors: int = 1
    actor_cpus: float = 1.0
    use_gpu: bool = False
    chunk_size: int = 32
    max_side: int = 0                 # decode images at this long side (match the extraction)
    limit: int = 0                    # first N labelled images only (0 = all)
    seed: int = 0


REFINE_PRESETS = {
    "voc": RefineConfig(),
    "coco": RefineConfig(max_side=448),
    # the 112 px demo world: a stride-2 grid (at IRN's stride 4 objects span a few cells), the
    # boundary threshold at the seed's own best threshold (its maps peak far above VOC's 0.15)
    "demo": RefineConfig(epochs=4, batch_size=8, optimizer="adam", lr=1e-3, resize_long=(112, 112), crop_size=0,
                         net_stride=2, bg_threshold=-1.0),
    "quick": RefineConfig(epochs=2, batch_size=8, optimizer="adam", lr=2e-3, resize_long=(112, 112), crop_size=0,
                          net_stride=2, bg_threshold=-1.0),
}


# ------------------------------------------------------------------ mask encoding


def mask_row(image_id: int, mask: np.ndarray) -> dict:
    return {"image_id": int(image_id), "height": int(mask.shape[0]), "width": int(mask.shape[1]),
            "png": encode_png(mask)}


# ------------------------------------------------------------------ chunk processors


class _MaskProcessor:
    """Reads the chunk's maps, makes one mask per image (``mask_for``), writes one shard."""

    def __init__(self, maps_dir: str, output_dir: str):
        self.maps_dir, self.output_dir = maps_dir, output_dir
        torch.manual_seed(0)

    def process(self, chunk_id: int, rows: list[dict], images: dict) -> list:
        maps = read_rows(self.maps_dir, [r["image_id"] for r in rows])
        out, errors = [], []
        for row in rows:
            image_id = row["image_id"]
            if image_id not in images:
                continue                     # decode_chunk recorded why
            if image_id not in maps:
                errors.append((str(image_id), f"no map under {self.maps_dir}: run the extraction first"))
                continue
            m = maps[image_id]
            image = image_at(images[image_id], int(m["height"]), int(m["width"]))
            out.append(mask_row(image_id, self.mask_for(image, m)))
        fs, path = open_fs(self.output_dir)
        write_table_atomic(pa.Table.from_pylist(out, schema=MASKS_SCHEMA), fs, f"{path}/{chunk_name(chunk_id)}")
        return errors

    def mask_for(self, image: np.ndarray, map_row: dict) -> np.ndarray:
        raise NotImplementedError


def _full_maps(map_row: dict) -> np.ndarray:
    maps = decode_maps(map_row["data"], map_row["map_shape"])
    return full_resolution(maps, int(map_row["height"]), int(map_row["width"]))


class ConfProcessor(_MaskProcessor):
    def __init__(self, maps_dir: str, output_dir: str, conf_fg: float, conf_bg: float, crf: CRFParams):
        super().__init__(maps_dir, output_dir)
        self.conf_fg, self.conf_bg, self.crf = conf_fg, conf_bg, crf

    def mask_for(self, image, map_row):
        return confident_labels(image, _full_maps(map_row), map_row["classes"], self.conf_fg, self.conf_bg, self.crf)


class CrfProcessor(_MaskProcessor):
    def __init__(self, maps_dir: str, output_dir: str, threshold: float, crf: CRFParams):
        super().__init__(maps_dir, output_dir)
        self.threshold, self.crf = threshold, crf

    def mask_for(self, image, map_row):
        return crf_pseudo_mask(image, _full_maps(map_row), map_row["classes"], self.threshold, self.crf)


class WalkProcessor(_MaskProcessor):
    """Loads the classifier + boundary head once per actor; walks each image's stride-4 maps."""

    def __init__(self, maps_dir: str, output_dir: str, irn_dir: str, walk: WalkParams, use_gpu: bool):
        super().__init__(maps_dir, output_dir)
        from wsss_ray.stages.extract import pick_device
        self.device = pick_device(use_gpu)
        self.net, self.model_cfg = load_boundary_net(irn_dir)
        self.net.to(self.device).eval()
        self.walk = walk

    def mask_for(self, image, map_row):
        from wsss_ray.data.augment import normalise_image
        x = torch.from_numpy(normalise_image(image, self.model_cfg.image_mean, self.model_cfg.image_std))
        boundary = infer_boundary(self.net, x.to(self.device)).cpu()
        maps = torch.from_numpy(decode_maps(map_row["data"], map_row["map_shape"]).copy())
        return rw_pseudo_mask(maps, boundary, map_row["classes"], int(map_row["height"]), int(map_row["width"]),
                              self.walk)


class _Factory:
    """A picklable zero-argument constructor (built inside each actor)."""

    def __init__(self, cls, **kwargs):
        self.cls, self.kwargs = cls, kwargs

    def __call__(self):
        return self.cls(**self.kwargs)


# ------------------------------------------------------------------ boundary head (Ray Train)


def load_boundary_net(irn_dir: str):
    """(BoundaryNet on the classifier it was trained on, that classifier's ModelConfig)."""
    fs, path = open_fs(irn_dir)
    with fs.open_input_stream(f"{path}/model.json") as f:
        meta = json.loads(f.read().decode())
    classifier, model_cfg, _ = load_classifier(meta["classifier"])
    net = BoundaryNet(classifier.backbone, stride=int(meta["refine"].get("net_stride", 4)))
    missing, unexpected = net.load_state_dict(load_state(irn_dir), strict=False)
    # heads saved before the displacement branch existed still serve the walk (boundary only)
    if unexpected or any(not k.startswith(("backbone.", "displace.", "reduce_dp.")) for k in missing):
        raise ValueError(f"{irn_dir}: boundary head does not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return net, model_cfg


@dataclass(frozen=True)
class BoundaryTask(TrainTask):
    """IRN's boundary (and displacement) head on the frozen classifier, trained with the
    affinity loss from confident-label pairs."""
    name: str
    refine: RefineConfig
    classifier: str                   # the classifier checkpoint directory
    model: ModelConfig                # its config (normalisation)
    conf_dir: str
    errors_dir: str = ""              # errors/train_irn_<method>: images a step could not decode

    @property
    def seed(self) -> int:
        return self.refine.seed

    @property
    def num_workers(self) -> int:
        return self.refine.num_workers

    @property
    def use_gpu(self) -> bool:
        return self.refine.use_gpu

    def items(self, run: RunDir) -> list[dict]:
        return _manifest_subset(run, self.refine.limit)[1]

    def schedule(self, num_items: int, world: int) -> Schedule:
        return epoch_schedule(num_items, self.refine.batch_size, world, self.refine.epochs)

    def batch_maker(self):
        c = self.refine
        # the classifier's rule: a random long side, applied as a scale to image and labels
        return PairBatches(self.conf_dir, c.resize_long, c.crop_size, c.hflip, self.model.image_mean,
                           self.model.image_std, c.seed, long_side=True, max_side=c.max_side,
                           errors_dir=self.errors_dir)

    def build(self):
        classifier, _, _ = load_classifier(self.classifier)
        net = BoundaryNet(classifier.backbone, stride=self.refine.net_stride)
        c = self.refine
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = (torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay) if c.optimizer == "adam"
                     else torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay))
        for group in optimizer.param_groups:
            group["initial_lr"] = c.lr
        return net, optimizer

    def loss(self, model, batch, world, device):
        x = torch.as_tensor(batch["x"])
        labels = np.asarray(batch["y"])
        y = torch.from_numpy(np.stack([downsample_labels(label, self.refine.net_stride) for label in labels]))
        boundary, displacement = model(x.to(device), with_displacement=True)
        return irn_loss(boundary, displacement, y.to(device), self.refine.train_radius)

    def save(self, last_epoch_dir, out_dir, meta):
        classifier, _, _ = load_classifier(self.classifier)
        net = BoundaryNet(classifier.backbone, stride=self.refine.net_stride)
        net.load_state_dict(load_state(last_epoch_dir))
        _save_head(net, {"classifier": self.classifier, "refine": to_dict(self.refine), **meta}, out_dir)


def train_boundary(run: RunDir, method: str, checkpoint: str, cfg: RefineConfig, max_failures: int = 2) -> dict:
    """Train (resume, or skip when finished) ``checkpoints/irn_<method>`` on the first
    ``cfg.limit`` labelled images that have confident labels."""
    _, model_cfg, _ = load_classifier(checkpoint)
    task = BoundaryTask(f"irn_{method}", cfg, checkpoint, model_cfg, run.uri("conf", method),
                        errors_dir=run.uri("errors", f"train_irn_{method}"))
    return fit(run, task, max_failures)


def _save_head(net: BoundaryNet, meta: dict, directory: str) -> None:
    from wsss_ray.models.checkpoint import save_state_dir
    save_state_dir(net.head_state(), meta, directory)


# ------------------------------------------------------------------ evaluation


def mask_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) confusion of a label mask, via the seed metric at one dummy threshold: one
    indicator plane per predicted class, so argmax([0.5, planes]) is the mask itself.
    Pixels the mask leaves at 255 are left out (as GT's 255)."""
    gt = np.where(pred == 255, 255, gt).astype(np.uint8)
    present = [int(c) for c in np.unique(pred) if 0 < c < 255]
    planes = np.stack([(pred == c).astype(np.float32) for c in present]) if present else np.zeros((0, *pred.shape))
    return threshold_confusions(planes, gt, [c - 1 for c in present], num_classes, [0.5])[0]


def confusions_of_mask_batch(batch: dict, masks: dict, num_classes: int) -> dict:
    k = num_classes + 1
    total, count = np.zeros((k, k), np.int64), 0
    for image_id, png in zip(batch["image_id"], batch["png"]):
        if masks.get(int(image_id)) is None:
            continue
        pred = decode_png(png)
        total += mask_confusion(pred, gt_at(load_mask(masks[int(image_id)]), *pred.shape), num_classes)
        count += 1
    return {"confusion": total.reshape(1, -1), "count": np.array([count])}


def evaluate_masks(run: RunDir, subdir: str, name: str, dataset: str, image_ids=None, extra: dict | None = None) -> dict:
    """Score the mask shards under ``<run>/<subdir>`` against GT -> ``eval/<name>.json``."""
    from wsss_ray.stages.evaluate import summarise
    manifest, classes = read_manifest(run.manifest())
    masks = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("mask_uri").to_pylist()))
    if image_ids is not None:
        masks = {i: masks.get(i) for i in image_ids}
    fs, path = open_fs(run.uri(*subdir.split("/")))
    shards = list_shards(fs, path)
    if not shards:
        raise FileNotFoundError(f"no mask shards under {run.uri(subdir)}")
    k = classes.num_classes + 1
    ds = ray.data.read_parquet(shards, filesystem=fs, override_num_blocks=min(len(shards), 64))
    ds = ds.map_batches(confusions_of_mask_batch, batch_size=16, batch_format="numpy", num_cpus=0.5,
                        fn_kwargs={"masks": masks, "num_classes": classes.num_classes})
    total, count = np.zeros((k, k), np.int64), 0
    for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
        total += part["confusion"].sum(0).reshape(k, k)
        count += int(part["count"].sum())
    result = summarise(name, dataset, [0.5], total[None], count, list(classes.names))
    result.update(extra or {})
    run.write_json(run.eval_json(name), result)
    return result


# ------------------------------------------------------------------ the stage


def _manifest_subset(run: RunDir, limit: int) -> tuple[pa.Table, list[dict]]:
    """Labelled manifest rows (sorted by image_id, first ``limit``) and their training rows."""
    manifest, _ = read_manifest(run.manifest())
    rows = sorted((r for r in manifest.to_pylist() if r["labels"]), key=lambda r: r["image_id"])
    rows = rows[:limit] if limit > 0 else rows
    table = pa.Table.from_pylist(rows, schema=manifest.schema)
    return table, [{"image_id": r["image_id"], "uri": r["uri"]} for r in rows]


def _run_masks(run: RunDir, table: pa.Table, out_sub: tuple, factory, stage: str, cfg: RefineConfig,
               strict: bool) -> dict:
    output_dir = run.uri(*out_sub)
    chunks = plan_chunks(table, cfg.chunk_size)
    todo = pending_chunks(chunks, output_dir)
    start = time.perf_counter()
    stats = run_chunked(todo, factory, run.uri("errors", stage), stage, num_actors=cfg.num_actors,
                        actor_cpus=cfg.actor_cpus, use_gpu=cfg.use_gpu, max_side=cfg.max_side, strict=strict)
    return {"stage": stage, "chunks_total": len(chunks), "chunks_run": len(todo),
            "images": int(sum(s["num_images"] for s in stats)), "errors": int(sum(s["num_errors"] for s in stats)),
            "seconds": time.perf_counter() - start}


def _seed_best(run: RunDir, method: str) -> dict:
    path = run.eval_json(method)
    return run.read_json(path)["best"] if run.exists(path) else {}


def make_pseudo_masks(run_dir: str, method: str, cfg: RefineConfig = RefineConfig(), dataset: str = "",
                      checkpoint: str = "", strict: bool = False, log=print) -> dict:
    """Pseudo masks for ``maps/<method>`` and their evaluation; returns a summary dict."""
    run = RunDir(absolute_root(run_dir))     # Ray workers have another working directory
    maps_dir = run.uri("maps", method)
    if not list_shards(*open_fs(maps_dir)):
        raise FileNotFoundError(f"no map shards under {maps_dir}: extract maps/{method} first")
    table, rows = _manifest_subset(run, cfg.limit)
    crf = CRFParams(max_sources=cfg.crf_max_sources)
    dataset = dataset or _dataset_name(run)
    seed = _seed_best(run, method)
    info: dict = {"method": method, "refiner": cfg.refiner, "images": len(rows)}
    if cfg.refiner == "crf":
        threshold = cfg.crf_threshold if cfg.crf_threshold >= 0 else float(seed.get("threshold", 0.15))
        name = f"{method}_crf"
        info["masks"] = _run_masks(run, table, ("masks", name), _Factory(
            CrfProcessor, maps_dir=maps_dir, output_dir=run.uri("masks", name), threshold=threshold, crf=crf),
            f"masks_{name}", cfg, strict)
        info["threshold"] = threshold
    elif cfg.refiner == "irn":
        name = method
        preset = conf_thresholds(method)
        conf_fg = cfg.conf_fg if cfg.conf_fg >= 0 else preset[0]
        conf_bg = cfg.conf_bg if cfg.conf_bg >= 0 else preset[1]
        info["conf_fg_bg"] = (conf_fg, conf_bg)
        log(f"confident labels for {method} at (fg {conf_fg}, bg {conf_bg}) ...")
        info["conf"] = _run_masks(run, table, ("conf", method), _Factory(
            ConfProcessor, maps_dir=maps_dir, output_dir=run.uri("conf", method), conf_fg=conf_fg, conf_bg=conf_bg,
            crf=crf), f"conf_{method}", cfg, strict)
        log(f"boundary head for {method} (Ray Train, {cfg.num_workers} workers) ...")
        info["train"] = train_boundary(run, method, checkpoint or run.uri("checkpoints", "cam"), cfg)
        bg_threshold = cfg.bg_threshold if cfg.bg_threshold >= 0 else float(seed.get("threshold", 0.25))
        info["bg_threshold"] = bg_threshold
        walk = WalkParams(cfg.walk_radius, cfg.beta, cfg.exp_times, bg_threshold, cfg.cam_power)
        log(f"random walk for {method} ...")
        info["masks"] = _run_masks(run, table, ("masks", name), _Factory(
            WalkProcessor, maps_dir=maps_dir, output_dir=run.uri("masks", name),
            irn_dir=run.uri("checkpoints", f"irn_{method}"), walk=walk, use_gpu=cfg.use_gpu),
            f"masks_{name}", cfg, strict)
    else:
        raise ValueError(f"unknown refiner {cfg.refiner!r}: irn or crf")
    ids = [r["image_id"] for r in rows]
    result = evaluate_masks(run, f"masks/{name}", f"pseudo_{name}", dataset, ids,
                            {"kind": "pseudo_mask", "refiner": cfg.refiner, "seed_best": seed,
                             "refine": to_dict(cfg)})
    if cfg.limit > 0 and seed:
        # the seed's mIoU on the same subset, so the comparison is like for like
        from wsss_ray.config import EvalConfig
        from wsss_ray.stages.evaluate import evaluate_maps
        sub = evaluate_maps(run, method, dataset, EvalConfig(thresholds=(seed["threshold"],)), ids, write=False)
        info["seed_miou_subset"] = sub["best"]["miou"]
    info.update(pseudo_miou=result["best"]["miou"], seed_miou=seed.get("miou"), num_images=result["num_images"])
    return info


def _dataset_name(run: RunDir) -> str:
    path = run.uri("config.json")
    if run.exists(path):
        ds = run.read_json(path).get("dataset", {})
        return ds.get("kind", "") if not ds.get("class_subset") else f"{ds['kind']}:{ds['class_subset']}"
    return ""
