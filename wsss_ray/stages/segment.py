"""Segmentation on pseudo masks (step 5): DeepLab training on Ray Train, then multi-scale +
flip inference on the chunked actor pool and scoring against GT.

Writes ``checkpoints/seg_<method>/`` (model.pt + model.json; ``epochs/epoch-NNN/`` while
training, as the classifier), ``seg/<method>/part-NNNNN.parquet`` (predicted masks, the
schema of ``masks/``) and ``eval/seg_<method>.json`` (the format of ``eval/<method>.json``).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch

from wsss_ray.config import from_dict, to_dict
from wsss_ray.data.errors import ItemError
from wsss_ray.data.images import absolute_root, load_mask, load_rgb
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.segmentation import (SegConfig, augment_pair, build_seg_optimizer, build_segmenter,
                                          load_segmenter, pad_batch, predict_mask, save_segmenter,
                                          segmentation_loss)
from wsss_ray.rundir import RunDir
from wsss_ray.stages.chunks import chunk_name, pending_chunks, plan_chunks, run_chunked
from wsss_ray.stages.refine import (MASKS_SCHEMA, _Factory, _image_at, _dataset_name, decode_png, evaluate_masks,
                                    mask_row, read_rows)
from wsss_ray.store import join_uri, open_fs, write_table_atomic

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ data


def saliency_uri(saliency_dir: str, image_uri: str) -> str:
    """``<saliency_dir>/<image stem>.png``: the layout saliency models (and InferCam) write."""
    stem = image_uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return join_uri(saliency_dir, f"{stem}.png")


def load_saliency(saliency_dir: str, image_uri: str, height: int, width: int) -> np.ndarray:
    """Foreground probability (H, W) in [0, 1] from an 8-bit grayscale PNG."""
    from PIL import Image
    sal = load_mask(saliency_uri(saliency_dir, image_uri))
    if sal.shape != (height, width):
        sal = np.asarray(Image.fromarray(sal).resize((width, height), Image.BILINEAR))
    return sal.astype(np.float32) / 255.0


def seg_batch(rows, idx, masks: dict, rng, cfg: SegConfig, saliency_dir: str, bad: set):
    """Augmented images, pseudo labels and (with a saliency dir) saliency for one step."""
    xs, ys, ss = [], [], []
    for i in idx:
        row = rows[i]
        if row["uri"] in bad or row["image_id"] not in masks:
            continue
        try:
            label = decode_png(masks[row["image_id"]])
            image = _image_at(load_rgb(row["uri"]), *label.shape)
            sal = load_saliency(saliency_dir, row["uri"], *label.shape) if saliency_dir else None
        except ItemError:
            bad.add(row["uri"])          # unreadable image or no saliency map: skipped from now on
            continue
        x, y, s = augment_pair(image, label, rng, cfg.scale_range, cfg.crop_size, cfg.hflip,
                               IMAGENET_MEAN, IMAGENET_STD, sal)
        xs.append(x)
        ys.append(y)
        ss.append(s)
    if not xs:                            # keep DDP in step: one all-ignore sample
        side = max(cfg.crop_size, 16)
        xs, ys = [np.zeros((3, side, side), np.float32)], [np.full((side, side), 255, np.uint8)]
        ss = [np.zeros((side, side), np.float32)] if saliency_dir else [None]
    return pad_batch(xs, ys, ss)


# ------------------------------------------------------------------ training (Ray Train)


def seg_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from wsss_ray.cams.training import poly_lr
    from wsss_ray.models.checkpoint import keep_epoch, restore_epoch, save_epoch
    from wsss_ray.stages.train import rank_indices, seed_everything

    cfg = from_dict(SegConfig, config["seg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.seed)
    model = build_segmenter(cfg.arch, config["num_classes"], cfg.backbone_weights, "none", cfg.freeze_bn)
    optimizer = build_seg_optimizer(model, cfg)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start_epoch = restore_epoch(d, model, optimizer)
    elif config.get("resume_dir"):
        start_epoch = restore_epoch(config["resume_dir"], model, optimizer)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    rows = config["rows"]
    masks = {k: v["png"] for k, v in read_rows(config["masks_dir"], [r["image_id"] for r in rows],
                                               ["image_id", "png"]).items()}
    per_worker = max(1, cfg.batch_size // world)          # batch_size is the global batch
    steps = -(-len(rank_indices(len(rows), 0, cfg.seed, rank, world)) // per_worker)
    epochs = -(-cfg.iterations // steps)
    bad: set = set()
    for epoch in range(start_epoch, epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        order = rank_indices(len(rows), epoch, cfg.seed, rank, world)
        losses, start = [], time.perf_counter()
        for step in range(min(steps, cfg.iterations - epoch * steps)):
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["initial_lr"], epoch * steps + step, cfg.iterations, cfg.poly_power)
            x, y, sal = seg_batch(rows, order[step * per_worker:(step + 1) * per_worker], masks, rng, cfg,
                                  config["saliency_dir"], bad)
            loss, _ = segmentation_loss(model(x.to(device)), y.to(device),
                                        None if sal is None else sal.to(device), cfg.saliency_alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = {"epoch": epoch, "iterations_done": min((epoch + 1) * steps, cfg.iterations),
                   "loss": float(np.mean(losses)), "epoch_seconds": time.perf_counter() - start}
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_epoch(tmp, model, optimizer, epoch, metrics)
                keep_epoch(config["epochs_dir"], model, optimizer, epoch, metrics)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


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
    import ray.train
    from ray.train.torch import TorchTrainer

    from wsss_ray.models.checkpoint import latest_epoch, load_state
    from wsss_ray.stages.train import train_run_config

    run = RunDir(absolute_root(run_dir))
    out_dir = run.checkpoint(f"seg_{method}")
    if run.exists(join_uri(out_dir, "model.pt")):
        return {"name": f"seg_{method}", "skipped": True}
    masks_dir = run.uri("masks", masks_name or method)
    rows = seg_rows(run, masks_dir, "train", limit)
    if not rows:
        raise FileNotFoundError(f"no pseudo masks under {masks_dir} for the training images: run jobs/pseudo_masks.py")
    _, classes = read_manifest(run.manifest())
    epochs_dir = join_uri(out_dir, "epochs")
    config = {"seg": to_dict(cfg), "rows": rows, "masks_dir": masks_dir, "num_classes": classes.num_classes + 1,
              "saliency_dir": absolute_root(saliency_dir) if saliency_dir else "", "epochs_dir": epochs_dir,
              "resume_dir": latest_epoch(epochs_dir)}
    start = time.perf_counter()
    trainer = TorchTrainer(
        seg_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": 1}),
        run_config=train_run_config(run, f"seg_{method}", max_failures))
    result = trainer.fit()
    model = build_segmenter(cfg.arch, classes.num_classes + 1, "none", "none", cfg.freeze_bn)
    last = latest_epoch(epochs_dir)
    model.load_state_dict(load_state(last))
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics["fit_seconds"] = time.perf_counter() - start
    save_segmenter(model, {"seg": to_dict(cfg), "num_classes": classes.num_classes + 1, "method": method,
                           "masks": masks_dir, "saliency_dir": config["saliency_dir"], "images": len(rows),
                           "train_metrics": metrics}, out_dir)
    return {"name": f"seg_{method}", "skipped": False, "images": len(rows), **metrics}


# ------------------------------------------------------------------ inference + evaluation


class SegPredictProcessor:
    """Loads the segmenter once per actor; writes the chunk's predicted masks."""

    def __init__(self, model_dir: str, output_dir: str, scales: tuple, flip: bool, use_gpu: bool, crf: bool = False):
        from wsss_ray.cams.training import normalise_image
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
