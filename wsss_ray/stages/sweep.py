"""Hyperparameter sweeps on Ray Tune, reusing a finished run's artifacts: the wiring of trials,
search spaces, schedulers and loggers.

Post-processing sweep (LPCAM's tau, K, mu_f, mu_b_low, mu_b_high; every trial scores the
whole threshold grid at once): the backbone never runs inside a trial; it reads the feature
cache of ``sweep_cache``. A trial splits by its tau, clusters per class (its K), selects
prototypes (its mu), makes maps from the cached fused features, evaluates them chunk by
chunk and reports to Tune after each chunk, so ASHA can stop a bad trial early.

Training sweep (ReCAM lambda, lr_fc2): each trial trains through ``train_classifier`` (a
TorchTrainer, Ray Train V2, launched from inside the Tune function), extracts w*w' maps and
evaluates them.

Fair protocol: ``evaluate_fair`` (and every sweep) scores the papers' protocol (threshold
chosen on the images it is reported on) next to a selection/report split
(``wsss_ray.selection``, ``fair_eval``); ``sweep_results`` writes the tables and plots.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time

import torch

from wsss_ray.cams.cam import strided_size
from wsss_ray.config import LPCAMConfig, from_dict, recam_model, to_dict
from wsss_ray.data.manifest import read_manifest
from wsss_ray.rundir import RunDir, evaluable_images, run_config
from wsss_ray.selection import FairAccumulator, split_selection_report, sweep_summary
from wsss_ray.stages.evaluate import image_confusions
from wsss_ray.stages.fair_eval import local_fair_confusions
from wsss_ray.stages.sweep_cache import build_feature_cache, image_meta, iter_cached_images, lpcam_from_fused, trial_bank
from wsss_ray.stages.sweep_results import result_rows, write_results
from wsss_ray.store import join_uri, map_row

KNOBS = ("tau", "k", "mu_f", "mu_b_low", "mu_b_high")


# ----------------------------------------------------------------------------- LPCAM trial

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


def search_space(kind: str, base: dict, grid: dict | None = None, space: dict | None = None) -> dict:
    """tau and K are discrete (trials that share them share the clustering); the mu are
    continuous ranges for random / optuna, lists for grid. A knob a grid (or a given ``space``:
    knob -> list or (lo, hi)) leaves out stays at the run's own value."""
    from ray import tune
    if kind == "grid":
        values = {k: [base[k]] for k in KNOBS} | (grid or space or GRID_SPACE)
        if any(not isinstance(v, list) for v in values.values()):
            raise ValueError(f"a grid takes lists of values, not ranges: {values}")
        return {k: tune.grid_search(list(v)) for k, v in values.items()}
    chosen = RANDOM_SPACE if space is None else {k: space.get(k, base[k]) for k in KNOBS}
    return {k: (tune.choice(v) if isinstance(v, list) else tune.uniform(*v) if isinstance(v, tuple) else v)
            for k, v in chosen.items()}


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
                    grid: dict | None = None, fused_dtype: str = "float16", space: dict | None = None) -> dict:
    """LPCAM post-processing sweep over ``KNOBS`` on a finished run's cached artifacts; ``space``
    (knob -> list or (lo, hi)) replaces the built-in one."""
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
        param_space=search_space(search, base, grid, space),
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
                    seed: int = 0, selection_fraction: float = 0.5, space: dict | None = None,
                    grid: bool = False) -> dict:
    """ReCAM training sweep: one TorchTrainer per trial, maps and checkpoints in the run dir;
    ``grid``: every combination of the space's lists once (``num_samples`` ignored)."""
    from ray import tune
    run = RunDir(run_dir)
    overrides = {k: v for k, v in {"epochs": epochs, "num_workers": num_workers}.items() if v}
    ids, labels, _ = evaluable_images(run)
    selection, _ = split_selection_report(ids, labels, selection_fraction, seed)
    ctx = {"run_dir": absolute_root(run), "train_overrides": overrides,
           "selection": selection}
    space = space or RECAM_SPACE
    sample = tune.grid_search if grid else tune.choice
    param_space = {k: sample(v) if isinstance(v, list) else tune.loguniform(*v) for k, v in space.items()}
    trained = run_config(run)["recam_train"]        # a knob the space leaves out: the run's own value
    param_space = {k: param_space.get(k, getattr(trained, k)) for k in RECAM_SPACE}
    # the trial function only waits on its trainer, whose workers hold their own CPUs
    trainable = tune.with_resources(tune.with_parameters(recam_trial, ctx=ctx), {"cpu": cpus_per_trial})
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric="miou", mode="max", num_samples=1 if grid else num_samples,
                                    max_concurrent_trials=max_concurrent,
                                    search_alg=None if grid else make_search("random", "miou", seed, None, max_concurrent)),
        run_config=tune.RunConfig(name=name, **run.ray_storage("sweeps"), verbose=1,
                                  callbacks=logger_callbacks(storage_root(run), name)))
    start = time.perf_counter()
    results = tuner.fit()
    rows = result_rows(results, tuple(space))
    summary = dict(sweep_summary(rows), timings_s={"trials_s": time.perf_counter() - start},
                   selection_images=len(selection), images=len(ids))
    write_results(run, name, rows, summary, tuple(space))
    return summary
