"""Figures over a run directory (overlays, mIoU curves, per-class IoU, sweep results) for
the notebook and the jobs. Reads only the run directory's files; no Ray."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from wsss_ray.data.images import load_mask, load_rgb
from wsss_ray.data.manifest import read_manifest
from wsss_ray.metrics import full_resolution


def _plt():
    # no backend forced: inline in notebooks, Agg when headless (matplotlib picks it)
    import matplotlib.pyplot as plt
    return plt


def methods_in(run_dir: str) -> list[str]:
    maps = Path(run_dir, "maps")
    return sorted(p.name for p in maps.iterdir() if p.is_dir() and any(p.glob("part-*.parquet"))) if maps.exists() else []


def load_maps(run_dir: str, method: str, image_ids) -> dict[int, dict]:
    table = pq.read_table(str(Path(run_dir, "maps", method)), filters=[("image_id", "in", list(image_ids))])
    return {r["image_id"]: r for r in table.to_pylist()}


def overlay(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Max over class maps as a red heat overlay."""
    heat = maps.max(0) if len(maps) else np.zeros(image.shape[:2], np.float32)
    red = np.stack([heat, np.zeros_like(heat), 1 - heat], -1) * 255
    return (0.55 * red + 0.45 * image).astype(np.uint8)


def overlay_grid(run_dir: str, methods=None, image_ids=None, count: int = 4):
    """Rows = images; columns = image, GT, one overlay per method."""
    from wsss_ray.store import decode_maps
    plt = _plt()
    manifest, classes = read_manifest(str(Path(run_dir, "manifest")))
    rows = {r["image_id"]: r for r in manifest.to_pylist() if r["labels"]}
    methods = methods or methods_in(run_dir)
    image_ids = list(image_ids or sorted(rows)[:count])
    maps = {m: load_maps(run_dir, m, image_ids) for m in methods}
    fig, axes = plt.subplots(len(image_ids), 2 + len(methods), figsize=(2.2 * (2 + len(methods)), 2.2 * len(image_ids)),
                             squeeze=False)
    for i, image_id in enumerate(image_ids):
        row = rows[image_id]
        stored = next((maps[m][image_id] for m in methods if image_id in maps[m]), None)
        side = max(stored["height"], stored["width"]) if stored else 0
        image = load_rgb(row["uri"], max_side=side)
        gt = load_mask(row["mask_uri"]) if row["mask_uri"] else np.zeros(image.shape[:2], np.uint8)
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(", ".join(classes.names[c] for c in row["labels"]), fontsize=7)
        axes[i, 1].imshow(np.where(gt == 255, 0, gt), cmap="tab20", interpolation="nearest")
        axes[i, 1].set_title("GT", fontsize=7)
        for j, m in enumerate(methods):
            r = maps[m].get(image_id)
            if r is not None:
                full = full_resolution(decode_maps(r["data"], r["map_shape"]), image.shape[0], image.shape[1])
                axes[i, 2 + j].imshow(overlay(image, full))
            axes[i, 2 + j].set_title(m, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def sample_images(run_dir: str, count: int = 3) -> tuple[list[np.ndarray], list[list[int]]]:
    """The first ``count`` labelled images of a run's manifest and their class ids, for the API."""
    manifest, _ = read_manifest(str(Path(run_dir, "manifest")))
    rows = sorted((r for r in manifest.to_pylist() if r["labels"]), key=lambda r: r["image_id"])[:count]
    return [load_rgb(r["uri"]) for r in rows], [list(r["labels"]) for r in rows]


def map_grid(images, labels, maps: dict[str, list[np.ndarray]], class_names):
    """Rows = images; columns = image, one overlay per named list of maps (full-resolution
    (n_labels, H, W) arrays in [0, 1], as the API returns them)."""
    plt = _plt()
    fig, axes = plt.subplots(len(images), 1 + len(maps), figsize=(2.2 * (1 + len(maps)), 2.2 * len(images)),
                             squeeze=False)
    for i, image in enumerate(images):
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(", ".join(class_names[c] for c in labels[i]), fontsize=7)
        for j, (name, per_image) in enumerate(maps.items()):
            axes[i, 1 + j].imshow(overlay(image, per_image[i]))
            axes[i, 1 + j].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def eval_results(run_dir: str) -> dict[str, dict]:
    out = {}
    for p in sorted(Path(run_dir, "eval").glob("*.json")):
        data = json.loads(p.read_text())
        if isinstance(data, dict) and "miou" in data and "best" in data:
            out[p.stem] = data
    return out


def curves(run_dir: str, methods=None):
    plt = _plt()
    results = eval_results(run_dir)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, res in results.items():
        if methods and name not in methods:
            continue
        ax.plot(res["thresholds"], res["miou"], marker="o", ms=2, label=f"{name} ({res['best']['miou']:.3f})")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("seed mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def per_class_iou(run_dir: str, methods=None):
    plt = _plt()
    results = {k: v for k, v in eval_results(run_dir).items() if not methods or k in methods}
    names = next(iter(results.values()))["class_names"]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) * max(1, len(results)) / 2), 3.6))
    width = 0.8 / max(1, len(results))
    for j, (name, res) in enumerate(results.items()):
        iou = [np.nan if v is None else v for v in res["best"]["per_class_iou"]]
        ax.bar(np.arange(len(names)) + j * width, iou, width, label=name)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=60, fontsize=6)
    ax.set_ylabel("IoU at best threshold")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
