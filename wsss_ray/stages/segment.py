"""Segmentation on pseudo masks (step 5): DeepLab training on Ray Train, then multi-scale +
flip inference on the chunked actor pool and scoring against GT.

Writes ``checkpoints/seg_<method>/`` (model.pt + model.json; ``epochs/epoch-NNN/`` while
training, as the classifier), ``seg/<method>/part-NNNNN.parquet`` (predicted masks, the
schema of ``masks/``) and ``eval/seg_<method>.json`` (the format of ``eval/<method>.json``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import pyarrow as pa
import torch

from wsss_ray.config import to_dict
from wsss_ray.data.images import absolute_root
from wsss_ray.data.manifest import read_manifest
from wsss_ray.data.train_batches import PairBatches
from wsss_ray.models.checkpoint import load_state
from wsss_ray.models.segmentation import (SegConfig, build_seg_optimizer, build_segmenter, load_segmenter,
                                          predict_mask, save_segmenter, segmentation_loss)
from wsss_ray.rundir import RunDir
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.engine import Schedule, TrainTask, epoch_schedule, fit
from wsss_ray.stages.refine import MASKS_SCHEMA, _dataset_name, _Factory, evaluate_masks, mask_row
from wsss_ray.store import open_fs, read_rows, write_table_atomic

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ training (the engine's task)


@dataclass(frozen=True)
class SegmentationTask(TrainTask):
    """The segmentation net on pseudo masks (and, with a saliency dir, InferCam's
    activation-aware saliency loss), for ``cfg.iterations`` steps of the global batch."""
    name: str
    seg: SegConfig
    num_classes: int                  # with background
    masks_dir: str
    saliency_dir: str = ""
    limit: int = 0
    errors_dir: str = ""              # errors/train_seg_<method>: images a step could not decode

    @property
    def seed(self) -> int:
        return self.seg.seed

    @property
    def num_workers(self) -> int:
        return self.seg.num_workers

    @property
    def use_gpu(self) -> bool:
        return self.seg.use_gpu

    def items(self, run: RunDir) -> list[dict]:
        rows = seg_rows(run, self.masks_dir, "train", self.limit)
        if not rows:
            raise FileNotFoundError(f"no pseudo masks under {self.masks_dir} for the training images: "
                                    "run jobs/pseudo_masks.py")
        return rows

    def schedule(self, num_items: int, world: int) -> Schedule:
        one_epoch = epoch_schedule(num_items, self.seg.batch_size, world, 1)
        epochs = -(-self.seg.iterations // one_epoch.steps_per_epoch)
        return dataclasses.replace(one_epoch, epochs=epochs, total_steps=self.seg.iterations,
                                   poly_power=self.seg.poly_power)

    def batch_maker(self):
        c = self.seg
        return PairBatches(self.masks_dir, c.scale_range, c.crop_size, c.hflip, IMAGENET_MEAN, IMAGENET_STD, c.seed,
                           saliency_dir=self.saliency_dir, errors_dir=self.errors_dir)

    def build(self):
        model = build_segmenter(self.seg.arch, self.num_classes, self.seg.backbone_weights, "none", self.seg.freeze_bn)
        return model, build_seg_optimizer(model, self.seg)

    def loss(self, model, batch, world, device):
        x, y = torch.as_tensor(batch["x"]), torch.as_tensor(batch["y"]).long()
        sal = torch.as_tensor(batch["saliency"]).to(device) if "saliency" in batch else None
        return segmentation_loss(model(x.to(device)), y.to(device), sal, self.seg.saliency_alpha)

    def save(self, last_epoch_dir, out_dir, meta):
        model = build_segmenter(self.seg.arch, self.num_classes, "none", "none", self.seg.freeze_bn)
        model.load_state_dict(load_state(last_epoch_dir))
        save_segmenter(model, {"seg": to_dict(self.seg), "num_classes": self.num_classes,
                               "method": self.name.removeprefix("seg_"), "masks": self.masks_dir,
                               "saliency_dir": self.saliency_dir, **meta}, out_dir)


def seg_rows(run: RunDir, masks_dir: str, split: str | None = "train", limit: int = 0) -> list[dict]:
    """Labelled manifest images of ``split`` that have a pseudo mask, sorted by image_id."""
    manifest, _ = read_manifest(run.manifest())
    rows = sorted((r for r in manifest.to_pylist() if r["labels"] and (split is None or r["split"] == split)),
                  key=lambda r: r["image_id"])
    have = set(read_rows(masks_dir, [r["image_id"] for r in rows], ["image_id"]))
    rows = [{"image_id": r["image_id"], "uri": r["uri"]} for r in rows if r["image_id"] in have]
    return rows[:limit] if limit > 0 else rows


def train_segmentation(run_dir: str, method: str, cfg: SegConfig, saliency_dir: str = "", masks_name: str = "",
                       limit: int = 0, max_failures: int = 2) -> dict:
    """Train (resume, or skip when finished) ``checkpoints/seg_<method>`` on ``masks/<masks_name or method>``."""
    run = RunDir(absolute_root(run_dir))
    _, classes = read_manifest(run.manifest())
    task = SegmentationTask(f"seg_{method}", cfg, classes.num_classes + 1, run.uri("masks", masks_name or method),
                            absolute_root(saliency_dir) if saliency_dir else "", limit,
                            errors_dir=run.uri("errors", f"train_seg_{method}"))
    return fit(run, task, max_failures)


# ------------------------------------------------------------------ inference + evaluation


class SegPredictProcessor:
    """Loads the segmenter once per actor; writes the chunk's predicted masks."""

    def __init__(self, model_dir: str, output_dir: str, scales: tuple, flip: bool, use_gpu: bool, crf: bool = False):
        from wsss_ray.data.augment import normalise_image
        from wsss_ray.stages.extract import pick_device
        self.device = pick_device(use_gpu)
        self.model, _ = load_segmenter(model_dir)
        self.model.to(self.device)
        self.normalise = normalise_image
        self.output_dir, self.scales, self.flip, self.crf = output_dir, tuple(scales), flip, crf

    def process(self, chunk_id: int, rows: list[dict], images: dict) -> list:
        out = []
        for row in rows:
            if row["image_id"] not in images:
                continue
            image = images[row["image_id"]]
            x = torch.from_numpy(self.normalise(image, IMAGENET_MEAN, IMAGENET_STD))[None]
            mask = predict_mask(self.model, x.to(self.device), image, self.scales, self.flip, self.crf)
            out.append(mask_row(row["image_id"], mask))
        fs, path = open_fs(self.output_dir)
        write_table_atomic(pa.Table.from_pylist(out, schema=MASKS_SCHEMA), fs, f"{path}/{chunk_name(chunk_id)}")
        return []


def eval_rows(run: RunDir, split: str, limit: int) -> tuple[pa.Table, str]:
    """Labelled, GT-masked manifest rows of ``split``; the training images when the manifest
    has no such split (the demo world), and the split actually used."""
    manifest, _ = read_manifest(run.manifest())
    rows = [r for r in manifest.to_pylist() if r["labels"] and r["mask_uri"]]
    chosen = [r for r in rows if r["split"] == split] or [r for r in rows if r["split"] == "train"]
    used = split if any(r["split"] == split for r in rows) else "train"
    chosen = sorted(chosen, key=lambda r: r["image_id"])
    chosen = chosen[:limit] if limit > 0 else chosen
    return pa.Table.from_pylist(chosen, schema=manifest.schema), used


def evaluate_segmentation(run_dir: str, method: str, cfg: SegConfig, split: str = "val", limit: int = 0,
                          num_actors: int = 1, chunk_size: int = 32, max_side: int = 0, strict: bool = False) -> dict:
    """Multi-scale + flip predictions -> ``seg/<method>/``, scored into ``eval/seg_<method>.json``."""
    run = RunDir(absolute_root(run_dir))
    table, used = eval_rows(run, split, limit)
    output_dir = run.uri("seg", method)
    chunks = plan_chunks(table, chunk_size)
    todo = pending_chunks(chunks, output_dir)
    factory = _Factory(SegPredictProcessor, model_dir=run.uri("checkpoints", f"seg_{method}"), output_dir=output_dir,
                       scales=tuple(cfg.eval_scales), flip=cfg.eval_flip, use_gpu=cfg.use_gpu, crf=cfg.eval_crf)
    start = time.perf_counter()
    run_chunked(todo, factory, run.uri("errors", f"seg_{method}"), f"seg_{method}", num_actors=num_actors,
                use_gpu=cfg.use_gpu, max_side=max_side, strict=strict)
    ids = table.column("image_id").to_pylist()
    pseudo = run.eval_json(f"pseudo_{method}")
    result = evaluate_masks(run, f"seg/{method}", f"seg_{method}", _dataset_name(run), ids, {
        "kind": "segmentation", "split": used, "eval_scales": list(cfg.eval_scales), "eval_flip": cfg.eval_flip, "eval_crf": cfg.eval_crf,
        "pseudo_best": run.read_json(pseudo)["best"] if run.exists(pseudo) else {}})
    result["seconds"] = time.perf_counter() - start
    return result


def seg_config(preset: SegConfig, **overrides) -> SegConfig:
    """A preset with the given non-empty overrides (the jobs' flags)."""
    return dataclasses.replace(preset, **{k: v for k, v in overrides.items() if v not in (None, "", 0)})
