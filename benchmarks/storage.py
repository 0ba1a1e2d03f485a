"""Map storage: our Parquet shards (uint8, stride 4, zstd) against the authors' float32
full-resolution maps (4 * H * W bytes per class map), in bytes per image and in seed mIoU.

Both map sets come from the same forward passes: the stored maps are ``multiscale_cam`` at
the stride-4 grid, encoded, written as the extraction stage writes them, read back and
upsampled as the evaluation stage does; the reference maps are ``multiscale_cam`` at
(H, W) + ``select_and_normalise`` kept in float32. Seed mIoU at every threshold of the
default grid uses ``wsss_ray.metrics``.

Targets: stored bytes <= 1/20 of float32; |mIoU(stored) - mIoU(float32)| <= 0.001 at
every threshold.

    PYTHONPATH=. .venv/bin/python benchmarks/storage.py --max-wait 60

Checkpoints: ``--demo-ckpt`` (default ``runs/demo/checkpoints/cam``, made by ``bash scripts/demo``)
and ``--coco-ckpt`` (default ``runs/coco_tiny/checkpoints/cam``, made by the README's coco_tiny
reference command); without them the script uses random heads and says so in its JSON.
"""
from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import pyarrow as pa
import torch

from _common import COCO_CKPT, COCO_TINY, DEMO_CKPT, add_load_args, checkpoint_ready, measured, ratio, scratch_dir, show
from _models import SCALES, coco_rows, demo_images, effnet_model, tiny_model, to_tensor
from wsss_ray.cams.cam import multiscale_cam, select_and_normalise, strided_size
from wsss_ray.config import EvalConfig
from wsss_ray.metrics import scores_from_confusion, threshold_confusions
from wsss_ray.stages.chunks import chunk_name
from wsss_ray.stages.evaluate import full_resolution, gt_at
from wsss_ray.store import MAPS_SCHEMA, decode_maps, map_row, open_fs, read_shards, write_table_atomic

STRIDE = 4
CHUNK = 32          # images per shard, as the extraction stage's default chunk size


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-images", type=int, default=480)
    p.add_argument("--coco-images", type=int, default=30)
    p.add_argument("--coco-split", default="train")
    p.add_argument("--max-side", type=int, default=448)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", default=scratch_dir("storage"), help="scratch directory (emptied first)")
    p.add_argument("--skip-coco", action="store_true")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--tag", default="", help="write results/storage<tag>.json")
    p.add_argument("--demo-ckpt", default=DEMO_CKPT,
                   help="trained tiny demo checkpoint directory (random weights when missing)")
    p.add_argument("--coco-ckpt", default=COCO_CKPT,
                   help="trained EfficientNet-Lite0 coco_tiny checkpoint (ImageNet backbone + random head when missing)")
    p.add_argument("--coco-root", default=COCO_TINY, help="coco_tiny data directory")
    add_load_args(p)
    return p.parse_args()


class Replay:
    """features_fn that records backbone outputs on the first pass and replays them on the
    second, so both output sizes come from one set of forward passes."""

    def __init__(self, features_fn):
        self.features_fn, self.saved, self.pos = features_fn, [], None

    def __call__(self, x):
        if self.pos is None:
            self.saved.append(self.features_fn(x))
            return self.saved[-1]
        out = self.saved[self.pos]
        self.pos += 1
        return out

    def rewind(self):
        self.pos = 0


def both_maps(model, images: torch.Tensor, classes: list) -> tuple[list, list]:
    """(stride-4 maps, full-resolution float32 maps) per image, max-normalised per class."""
    h, w = images.shape[-2:]
    weight = model.cam_weight("w").detach()
    replay = Replay(model.features)
    with torch.no_grad():
        small = multiscale_cam(replay, weight, images, strided_size(h, w, STRIDE), SCALES, True)
        replay.rewind()
        full = multiscale_cam(replay, weight, images, (h, w), SCALES, True)
    return ([m.numpy() for m in select_and_normalise(small, classes)],
            [m.numpy().astype(np.float32) for m in select_and_normalise(full, classes)])


def write_shards(rows: list[dict], directory: str) -> int:
    """Shards of CHUNK rows as the extraction stage writes them; returns their total bytes."""
    shutil.rmtree(directory, ignore_errors=True)
    fs, path = open_fs(directory)
    rows = sorted(rows, key=lambda r: r["image_id"])
    for i in range(0, len(rows), CHUNK):
        table = pa.Table.from_pylist(rows[i:i + CHUNK], schema=MAPS_SCHEMA)
        write_table_atomic(table, fs, f"{path}/{chunk_name(i // CHUNK)}")
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))


def stored_confusions(directory: str, masks: dict, num_classes: int, thresholds) -> np.ndarray:
    """Read the shards back and score them exactly as the evaluation stage does."""
    fs, path = open_fs(directory)
    total = 0
    for row in read_shards(fs, path).to_pylist():
        maps = full_resolution(decode_maps(row["data"], row["map_shape"]), row["height"], row["width"])
        gt = gt_at(masks[row["image_id"]], row["height"], row["width"])
        total = total + threshold_confusions(maps, gt, row["classes"], num_classes, thresholds)
    return total


def compare(name: str, model, samples, num_classes: int, work_dir: str) -> dict:
    """samples: iterable of (image_ids, images tensor, labels, GT masks). Returns the figures."""
    thresholds = EvalConfig().thresholds
    rows, masks, float_bytes, n_images = [], {}, 0, 0
    float_conf = stride_conf = 0
    for ids, images, labels, gts in samples:
        small, full = both_maps(model, images, labels)
        h, w = images.shape[-2:]
        for image_id, cls, s, f, gt in zip(ids, labels, small, full, gts):
            rows.append(map_row(image_id, cls, h, w, s))
            masks[image_id] = gt
            float_bytes += 4 * f.size                     # the authors' float32 (C, H, W) array
            gt = gt_at(gt, h, w)
            float_conf = float_conf + threshold_confusions(f, gt, cls, num_classes, thresholds)
            # float32 at stride 4 (no uint8 rounding): splits the loss into stride and rounding
            stride_conf = stride_conf + threshold_confusions(full_resolution(s, h, w), gt, cls, num_classes, thresholds)
            n_images += 1
    shard_bytes = write_shards(rows, os.path.join(work_dir, name))
    stored_conf = stored_confusions(os.path.join(work_dir, name), masks, num_classes, thresholds)
    out = summarise(name, thresholds, stored_conf, float_conf, shard_bytes, float_bytes, n_images)
    miou_stride = [scores_from_confusion(c)["miou"] for c in stride_conf]
    out["miou_float32_stride4"] = miou_stride
    out["max_abs_delta_stride_only"] = max(abs(a - b) for a, b in zip(miou_stride, out["miou_float32"]))
    out["max_abs_delta_rounding_only"] = max(abs(a - b) for a, b in zip(out["miou_stored"], miou_stride))
    show("  of which stride 4 alone (float32, upsampled)", out["max_abs_delta_stride_only"])
    show("  of which uint8 rounding alone", out["max_abs_delta_rounding_only"])
    return out


def summarise(name, thresholds, stored_conf, float_conf, shard_bytes, float_bytes, n_images) -> dict:
    miou_stored = [scores_from_confusion(c)["miou"] for c in stored_conf]
    miou_float = [scores_from_confusion(c)["miou"] for c in float_conf]
    delta = [a - b for a, b in zip(miou_stored, miou_float)]
    out = {"images": n_images, "shard_bytes_per_image": shard_bytes / n_images,
           "float32_bytes_per_image": float_bytes / n_images,
           "storage_fraction": ratio(shard_bytes, float_bytes), "times_smaller": ratio(float_bytes, shard_bytes),
           "thresholds": list(thresholds), "miou_stored": miou_stored, "miou_float32": miou_float,
           "delta_miou": delta, "max_abs_delta_miou": max(abs(d) for d in delta),
           "best_miou_stored": max(miou_stored), "best_miou_float32": max(miou_float)}
    print(f"{name}:", flush=True)
    show("images", n_images)
    show("Parquet shard bytes / image", out["shard_bytes_per_image"])
    show("float32 full-resolution bytes / image", out["float32_bytes_per_image"])
    show("storage fraction (target <= 0.05)", out["storage_fraction"])
    show("best mIoU stored / float32", f"{out['best_miou_stored']:.5f} / {out['best_miou_float32']:.5f}")
    show("max |delta mIoU| over thresholds (target <= 0.001)", out["max_abs_delta_miou"])
    return out


# ------------------------------------------------------------------ the two data sets


def demo_samples(cfg, count: int, batch: int = 16):
    images, masks, labels = demo_images(count)
    for i in range(0, count, batch):
        part = images[i:i + batch]
        yield list(range(i, i + len(part))), to_tensor(part, cfg), labels[i:i + batch], masks[i:i + batch]


def coco_samples(cfg, rows: list[dict], max_side: int):
    from wsss_ray.data.images import load_mask, load_rgb
    for row in rows:
        image = load_rgb(row["uri"], max_side=max_side)
        yield [row["image_id"]], to_tensor([image], cfg), [row["labels"]], [load_mask(row["mask_uri"])]


def demo_case(args) -> dict:
    trained = checkpoint_ready(args.demo_ckpt)
    model, cfg = tiny_model(args.demo_ckpt if trained else "")
    out = compare("demo", model, demo_samples(cfg, args.demo_images), 5, args.work_dir)
    out["model"] = f"tiny, trained checkpoint {args.demo_ckpt}" if trained else "tiny, random weights (no trained checkpoint)"
    return out


def coco_case(args) -> dict:
    trained = checkpoint_ready(args.coco_ckpt)
    rows, num_classes = coco_rows(os.path.join(args.work_dir, "coco_run"), args.coco_root, args.coco_split,
                                  args.coco_images)
    model, cfg = effnet_model(args.coco_ckpt if trained else "", num_classes)
    out = compare("coco_tiny", model, coco_samples(cfg, rows, args.max_side), num_classes, args.work_dir)
    out["model"] = (f"efficientnet_lite0, trained checkpoint {args.coco_ckpt}" if trained
                    else "efficientnet_lite0 ImageNet backbone + random head (no trained checkpoint)")
    out["max_side"] = args.max_side
    return out


def run_all(args) -> dict:
    torch.set_num_threads(args.threads)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    out = {} if args.skip_demo else {"demo": demo_case(args)}
    if not args.skip_coco and os.path.isdir(args.coco_root):
        out["coco_tiny"] = coco_case(args)
    elif not args.skip_coco:
        out["coco_tiny"] = {"skipped": f"{args.coco_root} not found"}
    return out


def main() -> None:
    args = parse_args()
    measured("storage" + args.tag, args, lambda: run_all(args))


if __name__ == "__main__":
    main()
