"""The classifier's training task (CAM: BCE; ReCAM: BCE + lambda * SCE, continuing from the
CAM checkpoint) on the one engine (stages/engine.py): Ray Train, TorchTrainer + DDP (gloo on
CPU, nccl on GPU), batches made in Ray Data.

A frozen backbone without random resize or crop trains as a linear probe: one pass computes
every image's pooled features, the epochs train the head on them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from wsss_ray.cams.recam import sce_loss_terms
from wsss_ray.cams.training import labels_to_targets, multilabel_soft_margin
from wsss_ray.config import ModelConfig, TrainConfig, to_dict
from wsss_ray.data.manifest import read_manifest
from wsss_ray.data.train_batches import ClassifierBatches, ProbeImages
from wsss_ray.models.checkpoint import load_state, save_classifier
from wsss_ray.models.classifier import build_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.stages.engine import Schedule, TrainTask, epoch_schedule, fit, item_fields, rank_indices


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


def probe_mode(cfg: TrainConfig, model_cfg: ModelConfig) -> bool:
    """A frozen backbone without random resize or crop: GAP features are fixed per (image,
    flip), so the linear probe trains on them directly (exact, and epochs cost nothing).
    ``cached_features``: the same for feature maps in the crop window at offset 0 (ReCAM)."""
    fixed = model_cfg.freeze_backbone and cfg.resize_long[0] == cfg.resize_long[1]
    if cfg.cached_features and not fixed:
        raise ValueError("cached_features needs a frozen backbone and a fixed long side "
                         f"(freeze_backbone={model_cfg.freeze_backbone}, resize_long={cfg.resize_long})")
    return fixed and (cfg.cached_features or (cfg.crop_size == 0 and cfg.recam_lambda <= 0))


def probe_features(stream, model, rank: int, world: int, device, hflip: bool, spatial: bool = False) -> dict:
    """Pooled features (flips, D) (or feature maps (flips, D, h, w) when ``spatial``) and class
    ids of every image: each rank computes its share of the probe pass, then all ranks gather
    everything."""
    mine = {}
    with torch.no_grad():
        for row in stream:
            x = torch.from_numpy(np.asarray(row["x"], np.float32))
            if x.numel() == 0:
                continue                                  # unreadable: left out
            x = x[None].to(device)
            views = [x, x.flip(-1)] if hflip else [x]
            pool = (lambda f: f) if spatial else (lambda f: f.mean((2, 3)))
            mine[int(row["index"])] = (torch.cat([pool(model.features(v)) for v in views]).cpu(),
                                       [int(c) for c in row["y"]])
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = {k: v for part in gathered for k, v in part.items()}
    return mine


def probe_batches(probe: dict, num_items: int, schedule: Schedule, seed: int, rank: int, world: int,
                  start_epoch: int, num_classes: int):
    """Each step's cached features (a random flip view each), (B, D, 1, 1) pooled or
    (B, D, h, w) maps, and targets."""
    for epoch in range(start_epoch, schedule.epochs):
        rng = np.random.default_rng([seed, epoch, rank])
        order = rank_indices(num_items, epoch, seed, rank, world)
        for step in range(schedule.steps_in(epoch)):
            keep = [int(i) for i in order[step * schedule.per_worker:(step + 1) * schedule.per_worker] if i in probe]
            if not keep:            # keep DDP in step
                keep = [next(iter(probe))]
            views = [probe[i][0][int(rng.integers(0, probe[i][0].shape[0]))] for i in keep]
            x = torch.stack(views)
            yield {"x": x[:, :, None, None] if x.dim() == 2 else x,
                   "y": labels_to_targets([probe[i][1] for i in keep], num_classes), "from_features": True}


@dataclass(frozen=True)
class ClassifierTask(TrainTask):
    """The multi-label classifier: BCE (CAM), or BCE + lambda * SCE continuing from the CAM
    checkpoint (ReCAM)."""
    name: str
    model: ModelConfig
    train: TrainConfig
    num_classes: int
    init_from: str = ""
    split: str | None = None
    errors_dir: str = ""              # errors/train_<name>: images a step could not decode

    @property
    def seed(self) -> int:
        return self.train.seed

    @property
    def num_workers(self) -> int:
        return self.train.num_workers

    @property
    def use_gpu(self) -> bool:
        return self.train.use_gpu

    @property
    def keep_epochs(self) -> int:
        return self.train.keep_epochs

    @property
    def checkpoint_every(self) -> int:
        return self.train.checkpoint_every

    @property
    def placement(self) -> str:
        return self.train.placement

    @property
    def probe(self) -> bool:
        return probe_mode(self.train, self.model)

    def items(self, run: RunDir) -> list[dict]:
        rows, _ = training_rows(run, self.split)
        if not rows:
            raise ValueError("no labelled images in the manifest: nothing to train on")
        return rows

    def schedule(self, num_items: int, world: int) -> Schedule:
        return epoch_schedule(num_items, self.train.batch_size, world, self.train.epochs, self.train.poly_power,
                              self.train.min_steps)

    def plan(self, items, schedule, rank, world, start_epoch):
        if not self.probe:
            return super().plan(items, schedule, rank, world, start_epoch)
        # the probe's one pass: each image once, this rank's share (the epochs use cached features)
        return [{"epoch": 0, "step": 0, **item_fields(items, [i])} for i in range(rank, len(items), world)]

    def batch_maker(self):
        m, t = self.model, self.train
        if self.probe:
            return ProbeImages(t.resize_long[0], m.image_mean, m.image_std, t.crop_size if t.cached_features else 0,
                               self.errors_dir)
        return ClassifierBatches(self.num_classes, t.resize_long, t.crop_size, t.hflip, m.image_mean, m.image_std,
                                 t.seed, self.errors_dir)

    def build(self):
        model = build_classifier(self.model.backbone, self.model.weights, self.num_classes,
                                 self.model.freeze_backbone, self.model.input_norm)
        if self.init_from:
            model.load_state_dict(load_state(self.init_from))
        if self.train.recam_lambda <= 0:
            # BCE never touches FC2; DDP (find_unused_parameters off) needs every trainable param used
            model.fc2.requires_grad_(False)
        return model, build_optimizer(model, self.train)

    def batches(self, shard, start_epoch, model, schedule, rank, world, device):
        if not self.probe:
            return super().batches(shard, start_epoch, model, schedule, rank, world, device)
        rows = shard.iter_rows()
        probe = probe_features(rows, model, rank, world, device, self.train.hflip, spatial=self.train.recam_lambda > 0)
        return probe_batches(probe, schedule.num_items, schedule, self.seed, rank, world, start_epoch, self.num_classes)

    def loss(self, model, batch, world, device):
        x, y = torch.tensor(batch["x"]), torch.tensor(batch["y"])     # a copy: Ray's batches are read-only
        return classifier_loss(model, x.to(device), y.to(device), self.train, world,
                               from_features=bool(batch.get("from_features", False)))

    def save(self, last_epoch_dir, out_dir, meta):
        model = build_classifier(self.model.backbone, "none", self.num_classes, self.model.freeze_backbone,
                                 self.model.input_norm)
        model.load_state_dict(load_state(last_epoch_dir))
        save_classifier(model, self.model, self.num_classes, out_dir,
                        extra={"train": to_dict(self.train), "train_metrics": meta["train_metrics"]})


def training_rows(run: RunDir, split: str | None = None) -> tuple[list[dict], int]:
    manifest, classes = read_manifest(run.manifest())
    rows = [{"uri": r["uri"], "labels": r["labels"]} for r in manifest.to_pylist()
            if r["labels"] and (split is None or r["split"] == split)]
    return rows, classes.num_classes


def train_classifier(run: RunDir, name: str, model_cfg: ModelConfig, cfg: TrainConfig,
                     init_from: str = "", split: str | None = None, max_failures: int = 2) -> dict:
    """Train (or resume, or skip when finished) ``checkpoints/<name>``; returns its metrics."""
    _, classes = read_manifest(run.manifest())
    task = ClassifierTask(name, model_cfg, cfg, classes.num_classes, init_from, split,
                          errors_dir=run.uri("errors", f"train_{name}"))
    return fit(run, task, max_failures)
