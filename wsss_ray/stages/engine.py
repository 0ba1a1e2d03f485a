"""One Ray Train loop and one driver for every network the pipeline trains: the classifier
(CAM, ReCAM), IRN's boundary head and the segmentation net. What differs per network is a
small ``TrainTask`` (stages/train.py, stages/refine.py, stages/segment.py): its model and
optimizer, its loss on one batch, its schedule, the torch-free callable that makes its
batches in Ray Data, and how its finished model is saved.

Input: per rank, one Ray Data pipeline over a plan of that rank's steps (one row per step:
epoch, step, the step's images) mapped through the task's batch maker in CPU tasks and
handed to the worker with ``get_dataset_shard(...).iter_batches``. Every rank gets its own
unsplit dataset (``DataConfig(datasets_to_split=[])``): ``streaming_split`` would hand
blocks to whichever worker asks first, so the sample order would depend on timing; the
per-rank plans keep it seeded (``rank_indices``), with order preserved.

Checkpoints: rank 0 writes ``checkpoints/<name>/epochs/epoch-NNN/`` each epoch and reports
the same files to Ray Train. A worker failure inside ``fit()`` resumes from Ray's latest
checkpoint (the worker skips the batches of epochs it has already trained); a rerun of the
job resumes from the latest complete epoch directory, and its plan starts there; a finished
model (``model.pt``) is skipped.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from wsss_ray.cams.training import poly_lr
from wsss_ray.models.checkpoint import keep_epoch, latest_epoch, restore_epoch, save_epoch
from wsss_ray.rundir import RunDir
from wsss_ray.stages.interrupts import off_the_main_thread
from wsss_ray.stages.progress import watched
from wsss_ray.store import join_uri, open_fs


@dataclass(frozen=True)
class Schedule:
    """Steps of one rank. ``total_steps`` is the poly schedule's length (segmentation stops
    at its iteration count, mid-epoch)."""
    num_items: int                    # training images (the epoch permutations' length)
    epochs: int
    steps_per_epoch: int
    per_worker: int
    total_steps: int
    poly_power: float = 0.9

    def steps_in(self, epoch: int) -> int:
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))


def epoch_schedule(num_items: int, batch_size: int, world: int, epochs: int, poly_power: float = 0.9,
                   min_steps: int = 0) -> Schedule:
    """``epochs`` passes, more when that is fewer than ``min_steps`` optimizer steps;
    ``batch_size`` is the global batch, as the authors' (split over ranks)."""
    per_worker = max(1, batch_size // world)
    steps = -(-len(rank_indices(num_items, 0, 0, 0, world)) // per_worker)
    epochs = max(epochs, -(-min_steps // steps))
    return Schedule(num_items, epochs, steps, per_worker, max(1, steps * epochs), poly_power)


def rank_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> np.ndarray:
    """This rank's sample order for an epoch: one seeded permutation, dealt round-robin and
    wrapped so every rank runs the same number of steps (DDP needs it)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = -(-n // world)
    order = np.resize(order, per_rank * world)
    return order[rank::world]


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_fields(items: list[dict], idx) -> dict:
    """The columns of a plan row: each field of the chosen items, as lists."""
    keys = items[0].keys() if items else ()
    return {"index": [int(i) for i in idx], **{k: [items[i][k] for i in idx] for k in keys}}


def epoch_plan(items: list[dict], schedule: Schedule, seed: int, rank: int, world: int, start_epoch: int) -> list[dict]:
    """One row per step of this rank, from ``start_epoch`` on."""
    rows = []
    for epoch in range(start_epoch, schedule.epochs):
        order = rank_indices(len(items), epoch, seed, rank, world)
        for step in range(schedule.steps_in(epoch)):
            idx = order[step * schedule.per_worker:(step + 1) * schedule.per_worker]
            rows.append({"epoch": epoch, "step": step, **item_fields(items, idx)})
    return rows


class TrainTask:
    """What one network's training plugs into the engine. Subclasses are frozen dataclasses
    (they travel to the workers) with ``name``, ``seed``, ``num_workers``, ``use_gpu``."""

    name: str
    seed: int
    num_workers: int
    use_gpu: bool
    keep_epochs: int = 2             # epoch directories kept for resuming; 0 = all
    checkpoint_every: int = 1        # epochs between checkpoints (and the last epoch always)
    placement: str = "PACK"          # Ray Train's placement of the workers: PACK or SPREAD over nodes

    # driver side
    def items(self, run: RunDir) -> list[dict]:
        """The training images, one dict each (the fields the batch maker reads)."""
        raise NotImplementedError

    def schedule(self, num_items: int, world: int) -> Schedule:
        raise NotImplementedError

    def plan(self, items: list[dict], schedule: Schedule, rank: int, world: int, start_epoch: int) -> list[dict]:
        return epoch_plan(items, schedule, self.seed, rank, world, start_epoch)

    def batch_maker(self):
        """A torch-free callable: plan row -> batch dict of arrays (runs in Ray Data tasks)."""
        raise NotImplementedError

    def save(self, last_epoch_dir: str, out_dir: str, meta: dict) -> None:
        """Write the finished model from the last epoch's state."""
        raise NotImplementedError

    # worker side
    def build(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Model and optimizer; every param group carries ``initial_lr`` for the poly schedule."""
        raise NotImplementedError

    def batches(self, shard, start_epoch: int, model, schedule: Schedule, rank: int, world: int, device):
        """The batches of every step from ``start_epoch`` on, in order (default: the plan's)."""
        return batch_stream(shard, start_epoch)

    def loss(self, model, batch: dict, world: int, device) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


def batch_stream(shard, start_epoch: int):
    """A rank's batches in plan order; those of epochs before ``start_epoch`` are passed over
    (Ray Train restored a later epoch than the plan starts at)."""
    for part in shard.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
        row = {k: v[0] for k, v in part.items()}
        if int(row["epoch"]) >= start_epoch:
            yield row


def core_of(model):
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    task: TrainTask = config["task"]
    schedule: Schedule = config["schedule"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    record_placement(config["placement_uris"][rank], rank)
    seed_everything(task.seed)
    model, optimizer = task.build()
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start_epoch = restore_epoch(d, model, optimizer)
    elif config["resume_dir"]:
        start_epoch = restore_epoch(config["resume_dir"], model, optimizer)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    shard = ray.train.get_dataset_shard(f"rank{rank}")
    batches = iter(task.batches(shard, start_epoch, core_of(model), schedule, rank, world, device))
    for epoch in range(start_epoch, schedule.epochs):
        model.train()
        losses, parts, images, waited, start = [], {}, 0, 0.0, time.perf_counter()
        for step in range(schedule.steps_in(epoch)):
            before = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - before
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["initial_lr"], epoch * schedule.steps_per_epoch + step,
                                      schedule.total_steps, schedule.poly_power)
            loss, parts = task.loss(model, batch, world, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            images += len(batch["x"])
        seconds = time.perf_counter() - start
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else 0.0, "epoch_seconds": seconds,
                   "steps_done": min((epoch + 1) * schedule.steps_per_epoch, schedule.total_steps),
                   "images_per_second": images * world / max(seconds, 1e-9),
                   "data_wait_share": waited / max(seconds, 1e-9), **{f"last_{k}": v for k, v in parts.items()}}
        if rank == 0:
            write_progress(config["progress_uri"], metrics["steps_done"])
        if (epoch + 1) % max(1, task.checkpoint_every) == 0 or epoch == schedule.epochs - 1:
            report_epoch(config["epochs_dir"], model, optimizer, epoch, metrics, task.keep_epochs, rank)


def write_progress(uri: str, steps_done: int) -> None:
    """Steps done so far, for the driver's progress bar (``progress/<name>.json`` of the run)."""
    from wsss_ray.store import write_bytes_atomic
    fs, path = open_fs(uri)
    write_bytes_atomic(fs, path, json.dumps({"steps_done": steps_done}).encode())


def record_placement(uri: str, rank: int) -> None:
    """Which node runs this rank (``progress/<name>.rank<k>.json``; a restart after a node loss
    rewrites it): where a multi-node run put its workers."""
    import ray
    from wsss_ray.store import write_bytes_atomic
    fs, path = open_fs(uri)
    write_bytes_atomic(fs, path, json.dumps({"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
                                             "time": time.time()}).encode())


def read_progress(uri: str) -> int:
    fs, path = open_fs(uri)
    with fs.open_input_stream(path) as f:
        return int(json.loads(f.read().decode())["steps_done"])


def report_epoch(epochs_dir: str, model, optimizer, epoch: int, metrics: dict, keep: int, rank: int) -> None:
    """Rank 0 writes the epoch directory and hands the same files to Ray Train."""
    import ray.train
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            save_epoch(tmp, model, optimizer, epoch, metrics)
            keep_epoch(epochs_dir, model, optimizer, epoch, metrics, keep)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


def train_run_config(run: RunDir, name: str, max_failures: int):
    """Ray Train's RunConfig for every trainer of a run: storage under ``ray_train`` (local
    or URI), restarts after worker failures, and only the last two Ray checkpoints kept."""
    import ray.train
    return ray.train.RunConfig(name=name, **run.ray_storage("ray_train"),
                               failure_config=ray.train.FailureConfig(max_failures=max_failures),
                               checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))


def next_epoch(epoch_dir: str) -> int:
    """The epoch a run resumed from ``epoch_dir`` trains next (0 without one)."""
    if not epoch_dir:
        return 0
    fs, path = open_fs(epoch_dir)
    with fs.open_input_stream(f"{path}/state.json") as f:
        return int(json.loads(f.read().decode())["epoch"]) + 1


def plan_datasets(task: TrainTask, items: list[dict], schedule: Schedule, start_epoch: int) -> dict:
    """Per rank: the plan's rows mapped through the task's batch maker in CPU tasks."""
    import ray.data
    datasets = {}
    for rank in range(task.num_workers):
        rows = task.plan(items, schedule, rank, task.num_workers, start_epoch)
        if not rows:           # nothing left to train: an empty stream keeps the loop uniform
            rows = [{"epoch": schedule.epochs, "step": 0, **item_fields(items, [])}]
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1024))
        datasets[f"rank{rank}"] = ds.map(task.batch_maker())
    return datasets


def fit(run: RunDir, task: TrainTask, max_failures: int = 2) -> dict:
    """Train (or resume, or skip when finished) ``checkpoints/<task.name>``; returns its metrics."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    out_dir = run.checkpoint(task.name)
    if run.exists(join_uri(out_dir, "model.pt")):
        meta = json.loads(run.read_text(join_uri(out_dir, "model.json")))
        return {"name": task.name, "skipped": True, **meta.get("train_metrics", {})}
    items = task.items(run)
    epochs_dir = join_uri(out_dir, "epochs")        # local path or URI: every worker reaches it
    resume_dir = latest_epoch(epochs_dir)
    schedule = task.schedule(len(items), task.num_workers)
    progress_uri = run.uri("progress", f"{task.name}.json")
    config = {"task": task, "schedule": schedule, "epochs_dir": epochs_dir, "resume_dir": resume_dir,
              "progress_uri": progress_uri,
              "placement_uris": [run.uri("progress", f"{task.name}.rank{r}.json") for r in range(task.num_workers)]}
    start = time.perf_counter()
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        datasets=plan_datasets(task, items, schedule, next_epoch(resume_dir)),
        dataset_config=ray.train.DataConfig(datasets_to_split=[],
                                            execution_options=ExecutionOptions(preserve_order=True)),
        scaling_config=ray.train.ScalingConfig(num_workers=task.num_workers, use_gpu=task.use_gpu,
                                               resources_per_worker={"CPU": 1},
                                               placement_strategy=task.placement),
        run_config=train_run_config(run, task.name, max_failures))
    with watched(f"train {task.name}", schedule.total_steps, lambda: read_progress(progress_uri), unit="step"):
        # off the main thread: Ray Train then keeps its SIGINT handler out of the job (stages/interrupts.py)
        result = off_the_main_thread(trainer.fit, f"fit-{task.name}")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    metrics["fit_seconds"] = time.perf_counter() - start
    task.save(latest_epoch(epochs_dir), out_dir, {"train_metrics": metrics, "images": len(items)})
    return {"name": task.name, "skipped": False, "images": len(items), **metrics}
