"""Classifier training on Ray Train (TorchTrainer + DDP: gloo on CPU, nccl on GPU).

The BCE classifier (CAM) and ReCAM (BCE + lambda * SCE, continuing from the CAM
checkpoint) share this loop. Each epoch rank 0 writes ``checkpoints/<name>/epoch-NNN/``
(model, optimiser, epoch) and reports it to Ray Train; a worker failure resumes from
Ray's latest checkpoint, a rerun of the job from the latest complete epoch directory,
and a finished run (``checkpoints/<name>/model.pt``) is skipped.
"""
from __future__ import annotations

import json
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

from wsss_ray.cams.recam import sce_loss_terms
from wsss_ray.cams.training import augment, labels_to_targets, multilabel_soft_margin, poly_lr
from wsss_ray.config import ModelConfig, TrainConfig, from_dict, to_dict
from wsss_ray.data.errors import ItemError
from wsss_ray.data.images import load_rgb
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import (keep_epoch, latest_epoch, load_state, restore_epoch, save_classifier,
                                         save_epoch)
from wsss_ray.models.classifier import build_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.store import join_uri


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = model.param_groups()
    lrs = {"backbone": cfg.lr_backbone, "head": cfg.lr_head, "fc2": cfg.lr_fc2}
    if cfg.recam_lambda <= 0:
        groups["fc2"] = []          # FC2 is ReCAM's: untouched by BCE training
    param_groups = [{"params": ps, "lr": lrs[name], "initial_lr": lrs[name], "name": name}
                    for name, ps in groups.items() if ps]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(param_groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def rank_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> np.ndarray:
    """This rank's sample order for an epoch: one seeded permutation, dealt round-robin and
    wrapped so every rank runs the same number of steps (DDP needs it)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = -(-n // world)
    order = np.resize(order, per_rank * world)
    return order[rank::world]


def classifier_loss(model, images, targets, cfg: TrainConfig, world: int,
                    from_features: bool = False) -> tuple[torch.Tensor, dict]:
    """BCE, plus lambda * SCE for ReCAM with the SCE mean taken over the global batch."""
    core = model.module if hasattr(model, "module") else model
    # call the (DDP) model itself: bypassing DDP's forward leaves gradients un-averaged
    logits, feats = model(images, with_features=True, from_features=from_features)
    bce = multilabel_soft_margin(logits, targets)
    parts = {"bce": float(bce.detach())}
    if cfg.recam_lambda <= 0:
        return bce, parts
    sce_sum, count = sce_loss_terms(feats, core.head.weight.flatten(1), core.fc2.weight, targets, cfg.recam_detach)
    global_count = torch.tensor([float(count)], device=images.device)   # nccl reduces device tensors only
    if world > 1:
        dist.all_reduce(global_count)
    # DDP averages gradients over ranks: scale by world so the result is sum / global count
    sce = sce_sum * world / global_count.clamp(min=1).item()
    parts["sce"] = float(sce.detach())
    return bce + cfg.recam_lambda * sce, parts


def load_batch(rows, idx, rng, cfg: TrainConfig, model_cfg: ModelConfig, bad: set):
    images, labels = [], []
    for i in idx:
        row = rows[i]
        if row["uri"] in bad:
            continue
        try:
            image = load_rgb(row["uri"])
        except ItemError:
            bad.add(row["uri"])          # the manifest stage already recorded why
            continue
        images.append(augment(image, rng, cfg.resize_long, cfg.crop_size, cfg.hflip,
                              model_cfg.image_mean, model_cfg.image_std))
        labels.append(row["labels"])
    return images, labels


def core_of(model):
    return model.module if hasattr(model, "module") else model


def probe_mode(cfg: TrainConfig, model_cfg: ModelConfig) -> bool:
    """A frozen backbone without random resize or crop: GAP features are fixed per (image,
    flip), so the linear probe trains on them directly (exact, and epochs cost nothing)."""
    return (model_cfg.freeze_backbone and cfg.crop_size == 0 and cfg.resize_long[0] == cfg.resize_long[1]
            and cfg.recam_lambda <= 0)


def probe_features(model, rows, cfg: TrainConfig, model_cfg: ModelConfig, rank: int, world: int, device):
    """Pooled features (N, flips, D) of every row: each rank computes its share, then all gather."""
    from wsss_ray.cams.training import normalise_image, resize_long_side
    mine = {}
    with torch.no_grad():
        for i in range(rank, len(rows), world):
            try:
                image = resize_long_side(load_rgb(rows[i]["uri"]), cfg.resize_long[0])
            except ItemError:
                continue
            x = torch.from_numpy(normalise_image(image, model_cfg.image_mean, model_cfg.image_std))[None].to(device)
            views = [x, x.flip(-1)] if cfg.hflip else [x]
            mine[i] = torch.cat([model.features(v).mean((2, 3)) for v in views]).cpu()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = {k: v for part in gathered for k, v in part.items()}
    return mine


def probe_batch(probe: dict, rows, idx, rng, hflip: bool):
    """(B, D, 1, 1) cached pooled features (a random flip view each) and their labels."""
    keep = [i for i in idx if i in probe]
    if not keep:            # keep DDP in step
        keep = [next(iter(probe))]
    views = [probe[i][int(rng.integers(0, probe[i].shape[0]))] for i in keep]
    return torch.stack(views)[:, :, None, None], [rows[i]["labels"] for i in keep]


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(TrainConfig, config["train"])
    model_cfg = from_dict(ModelConfig, config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.seed)
    model = build_classifier(model_cfg.backbone, model_cfg.weights, config["num_classes"], model_cfg.freeze_backbone,
                             model_cfg.input_norm)
    if config.get("init_from"):
        model.load_state_dict(load_state(config["init_from"]))
    if cfg.recam_lambda <= 0:
        # BCE never touches FC2; DDP (find_unused_parameters off) needs every trainable param used
        model.fc2.requires_grad_(False)
    optimizer = build_optimizer(model, cfg)
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
    per_worker = max(1, cfg.batch_size // world)          # batch_size is the global batch, as the authors'
    probe = probe_features(core_of(model), rows, cfg, model_cfg, rank, world, device) if probe_mode(cfg, model_cfg) else None
    steps_per_epoch = -(-len(rank_indices(len(rows), 0, cfg.seed, rank, world)) // per_worker)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    bad: set = set()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        order = rank_indices(len(rows), epoch, cfg.seed, rank, world)
        losses, start = [], time.perf_counter()
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["initial_lr"], global_step, total_steps, cfg.poly_power)
            idx = order[step * per_worker:(step + 1) * per_worker]
            if probe is not None:
                x, labels = probe_batch(probe, rows, idx, rng, cfg.hflip)
            else:
                images, labels = load_batch(rows, idx, rng, cfg, model_cfg, bad)
                if not images:          # keep DDP in step: a zero-loss step still all-reduces
                    images, labels = [np.zeros((3, cfg.crop_size, cfg.crop_size), np.float32)], [[]]
                x = torch.from_numpy(np.stack(images))
            y = labels_to_targets(labels, config["num_classes"]).to(device)
            loss, parts = classifier_loss(model, x.to(device), y, cfg, world, from_features=probe is not None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)), "epoch_seconds": time.perf_counter() - start,
                   "images_per_second": len(order) / max(time.perf_counter() - start, 1e-9)}
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_epoch(tmp, model, optimizer, epoch, metrics)
                keep_epoch(config["epochs_dir"], model, optimizer, epoch, metrics, cfg.keep_epochs)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


def train_run_config(run: RunDir, name: str, max_failures: int):
    """Ray Train's RunConfig for every trainer of a run: storage under ``ray_train`` (local
    or URI), restarts after worker failures, and only the last two Ray checkpoints kept."""
    import ray.train
    return ray.train.RunConfig(name=name, **run.ray_storage("ray_train"),
                               failure_config=ray.train.FailureConfig(max_failures=max_failures),
                               checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))


def training_rows(run: RunDir, split: str | None = None) -> tuple[list[dict], int]:
    manifest, classes = read_manifest(run.manifest())
    rows = [{"uri": r["uri"], "labels": r["labels"]} for r in manifest.to_pylist()
            if r["labels"] and (split is None or r["split"] == split)]
    return rows, classes.num_classes


def train_classifier(run: RunDir, name: str, model_cfg: ModelConfig, cfg: TrainConfig,
                     init_from: str = "", split: str | None = None, max_failures: int = 2) -> dict:
    """Train (or resume, or skip when finished) ``checkpoints/<name>``; returns its metrics."""
    import ray.train
    from ray.train.torch import TorchTrainer

    out_dir = run.checkpoint(name)
    if run.exists(join_uri(out_dir, "model.pt")):
        return {"name": name, "skipped": True, **json.loads(run.read_text(join_uri(out_dir, "model.json"))).get("train_metrics", {})}
    rows, num_classes = training_rows(run, split)
    if not rows:
        raise ValueError("no labelled images in the manifest: nothing to train on")
    epochs_dir = join_uri(out_dir, "epochs")        # local path or URI: every worker reaches it
    config = {"train": to_dict(cfg), "model": to_dict(model_cfg), "num_classes": num_classes, "rows": rows,
              "init_from": init_from, "resume_dir": latest_epoch(epochs_dir), "epochs_dir": epochs_dir}
    start = time.perf_counter()
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": 1}),
        run_config=train_run_config(run, name, max_failures))
    result = trainer.fit()
    seconds = time.perf_counter() - start
    last = latest_epoch(epochs_dir)
    model = build_classifier(model_cfg.backbone, "none", num_classes, model_cfg.freeze_backbone, model_cfg.input_norm)
    model.load_state_dict(load_state(last))
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics["fit_seconds"] = seconds
    save_classifier(model, model_cfg, num_classes, out_dir, extra={"train": to_dict(cfg), "train_metrics": metrics})
    return {"name": name, "skipped": False, **metrics}
