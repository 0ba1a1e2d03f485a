"""Seed evaluation: one pass over maps and GT masks builds the confusion matrices of every
background threshold (Ray Data map over shards, summed on the driver; small sets on the driver), then writes
``eval/<method>.json`` and ``eval/<method>.png`` (mIoU against threshold)."""
from __future__ import annotations

import contextlib

import numpy as np
import ray
import torch

from wsss_ray.config import EvalConfig
from wsss_ray.data.images import load_mask
from wsss_ray.data.manifest import read_manifest
from wsss_ray.metrics import class_counts, full_resolution, gt_at, scores_from_confusion, threshold_confusions
from wsss_ray.rundir import RunDir
from wsss_ray.store import decode_maps, list_shards, open_fs


def image_confusions(row: dict, mask_uri: str, num_classes: int, thresholds) -> np.ndarray:
    maps = decode_maps(row["data"], row["map_shape"])
    maps = full_resolution(maps, int(row["height"]), int(row["width"]))
    gt = gt_at(load_mask(mask_uri), int(row["height"]), int(row["width"]))
    return threshold_confusions(maps, gt, list(row["classes"]), num_classes, thresholds)


def confusions_of_batch(batch: dict, masks: dict, num_classes: int, thresholds, image_ids=None) -> dict:
    k = num_classes + 1
    total = np.zeros((len(thresholds), k, k), np.int64)
    count = 0
    for i in range(len(batch["image_id"])):
        image_id = int(batch["image_id"][i])
        if masks.get(image_id) is None or (image_ids is not None and image_id not in image_ids):
            continue
        row = {key: batch[key][i] for key in batch}
        total += image_confusions(row, masks[image_id], num_classes, thresholds)
        count += 1
    return {"confusion": total.reshape(1, -1), "count": np.array([count])}


LOCAL_EVAL_MAX_IMAGES = EvalConfig().driver_max_images       # eval.driver_max_images: why


@contextlib.contextmanager
def one_torch_thread():
    """torch's bilinear upsampling of the maps rounds differently with other thread counts (a few
    pixels in 14 M flip at a threshold): score with one thread, as every Ray task does, so a score
    does not depend on where it was computed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def map_batches_of(run: RunDir, method: str, fn, fn_kwargs: dict, local: bool):
    """``fn`` over ``maps/<method>`` in batches of 16 rows: on the driver, shard by shard
    (``local``), else in Ray Data tasks."""
    import pyarrow.parquet as pq
    fs, path = open_fs(run.uri("maps", method))
    shards = list_shards(fs, path)
    if not shards:
        raise FileNotFoundError(f"no map shards under {run.uri('maps', method)}: run the extraction first")
    if local:
        for shard in shards:                # one shard in memory at a time
            table = pq.read_table(shard, filesystem=fs)
            with one_torch_thread():        # as in a Ray task (OMP_NUM_THREADS=1): see one_torch_thread
                parts = [fn({c: part.column(c).to_numpy(zero_copy_only=False) for c in part.column_names}, **fn_kwargs)
                         for part in (table.slice(i, 16) for i in range(0, table.num_rows, 16))]
            yield from parts
        return
    ds = ray.data.read_parquet(shards, filesystem=fs, override_num_blocks=min(len(shards), 64))
    ds = ds.map_batches(fn, batch_size=16, batch_format="numpy", num_cpus=0.5, fn_kwargs=fn_kwargs)
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def accumulate_confusions(run: RunDir, method: str, thresholds, image_ids=None, local: bool | None = None,
                          driver_max_images: int = LOCAL_EVAL_MAX_IMAGES) -> tuple[np.ndarray, int, list]:
    """Summed confusions of every threshold; ``local=None`` scores on the driver up to
    ``driver_max_images`` images."""
    manifest, classes = read_manifest(run.manifest())
    masks = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("mask_uri").to_pylist()))
    k = classes.num_classes + 1
    kwargs = {"masks": masks, "num_classes": classes.num_classes, "thresholds": list(thresholds),
              "image_ids": None if image_ids is None else set(image_ids)}
    total, count = np.zeros((len(thresholds), k, k), np.int64), 0
    local = manifest.num_rows <= driver_max_images if local is None else local
    for part in map_batches_of(run, method, confusions_of_batch, kwargs, local):
        total += part["confusion"].sum(0).reshape(len(thresholds), k, k)
        count += int(part["count"].sum())
    return total, count, list(classes.names)


def counts_of_batch(batch: dict, masks: dict, num_classes: int, thresholds) -> dict:
    """One map batch -> each scored image's class counts (T, K, 3), flattened per row."""
    ids, counts = [], []
    for i in range(len(batch["image_id"])):
        image_id = int(batch["image_id"][i])
        if masks.get(image_id) is None:
            continue
        row = {key: batch[key][i] for key in batch}
        ids.append(image_id)
        counts.append(class_counts(image_confusions(row, masks[image_id], num_classes, thresholds)).reshape(-1))
    width = len(thresholds) * (num_classes + 1) * 3
    return {"image_id": np.asarray(ids, np.int64),
            "counts": np.stack(counts) if counts else np.zeros((0, width), np.int64)}


def per_image_counts(run: RunDir, method: str, thresholds, local: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image ids ascending, (N, T, K, 3) class counts) of ``maps/<method>``: what a bootstrap
    over images needs, K times smaller than per-image confusions."""
    manifest, classes = read_manifest(run.manifest())
    masks = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("mask_uri").to_pylist()))
    kwargs = {"masks": masks, "num_classes": classes.num_classes, "thresholds": list(thresholds)}
    ids, counts = [], []
    local = manifest.num_rows <= LOCAL_EVAL_MAX_IMAGES if local is None else local
    for part in map_batches_of(run, method, counts_of_batch, kwargs, local):
        ids.append(part["image_id"])
        counts.append(part["counts"])
    ids, counts = np.concatenate(ids), np.concatenate(counts)
    order = np.argsort(ids)
    return ids[order], counts[order].reshape(len(ids), len(thresholds), classes.num_classes + 1, 3)


def summarise(method: str, dataset: str, thresholds, confusions: np.ndarray, num_images: int,
              class_names: list) -> dict:
    per_t = [scores_from_confusion(c) for c in confusions]
    best_i = int(np.nanargmax([s["miou"] for s in per_t]))
    best = dict(per_t[best_i], threshold=float(thresholds[best_i]))
    return {"method": method, "dataset": dataset, "num_images": num_images,
            "thresholds": [float(t) for t in thresholds], "miou": [s["miou"] for s in per_t],
            "precision": [s["precision"] for s in per_t], "recall": [s["recall"] for s in per_t],
            "best": best, "class_names": ["background", *class_names]}


def plot_curves(results: list[dict], png_path: str, title: str = "seed mIoU vs background threshold") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for res in results:
        ax.plot(res["thresholds"], res["miou"], marker="o", ms=3,
                label=f"{res['method']} (best {res['best']['miou']:.3f} @ {res['best']['threshold']:.2f})")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, png_path)


def save_figure(fig, png_path: str) -> None:
    """Write a matplotlib figure as PNG to a local path or URI, then close it."""
    import matplotlib.pyplot as plt
    fs, path = open_fs(png_path)
    with fs.open_output_stream(path) as out:
        fig.savefig(out, format="png")
    plt.close(fig)


def evaluate_maps(run: RunDir, method: str, dataset: str, cfg: EvalConfig = EvalConfig(),
                  image_ids=None, write: bool = True, tag: str = "") -> dict:
    """Evaluate ``maps/<method>`` against GT; writes ``eval/<method><tag>.json`` and ``.png``."""
    confusions, count, names = accumulate_confusions(run, method, cfg.thresholds, image_ids,
                                                     driver_max_images=cfg.driver_max_images)
    result = summarise(method, dataset, cfg.thresholds, confusions, count, names)
    if write:
        run.write_json(run.eval_json(method + tag), result)
        plot_curves([result], run.uri("eval", f"{method}{tag}.png"))
    return result
