"""Diagnosis: how much of ReCAM's w*w' comes from channels that both heads count against
the class?

The element-wise product is positive where w and w' agree in sign, so a channel with
w < 0 and w' < 0 (evidence *against* class k under both heads) adds to class k's map
exactly like one with w > 0 and w' > 0. This script reports, per class, the share of the
product's positive mass that comes from (-, -) channels and the cosine between w and w',
and, given a run directory with GT masks, evaluates the maps of six weights in this
process (the extraction stage's multi-scale CAM, the evaluation stage's confusion
matrices, at the run's scales, flip and 4-pixel map grid): the pipeline's four, w, w',
w+w' and w*w', and two sign-aware products that are not the authors' formula,
relu(w)*relu(w') and w*w' kept only where w > 0.

    PYTHONPATH=. .venv/bin/python experiments/recam_weight_signs.py CHECKPOINT_DIR [RUN_DIR] [NAME]

RUN_DIR's config.json gives the scales, flip, map grid, max side and threshold grid.

Writes ``experiments/results/<NAME>.json`` (default ``recam_weight_signs``).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from benchmarks._common import write_results
from wsss_ray.cams.cam import multiscale_cam, select_and_normalise, strided_size
from wsss_ray.config import CamConfig
from wsss_ray.data.images import load_mask, load_rgb
from wsss_ray.data.manifest import read_manifest
from wsss_ray.metrics import full_resolution, gt_at, scores_from_confusion, threshold_confusions
from wsss_ray.rundir import RunDir
from wsss_ray.stages.extract import ModelRunner


def weight_variants(w: torch.Tensor, w2: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"w": w, "w'": w2, "w+w'": w + w2, "w*w'": w * w2,
            "relu(w)*relu(w')": w.clamp(min=0) * w2.clamp(min=0), "w*w' where w>0": w * w2 * (w > 0)}


def sign_shares(w: torch.Tensor, w2: torch.Tensor) -> dict:
    product = w * w2
    both_pos = (product * ((w > 0) & (w2 > 0))).sum(1)
    both_neg = (product * ((w < 0) & (w2 < 0))).sum(1)
    return {"share_of_positive_mass_from_neg_neg": (both_neg / (both_pos + both_neg)).numpy().round(3).tolist(),
            "cosine_w_wprime": torch.nn.functional.cosine_similarity(w, w2, dim=1).numpy().round(3).tolist(),
            "fraction_of_positive_products": (product > 0).float().mean(1).numpy().round(3).tolist()}


def same_size_batches(rows: list[dict], cam: CamConfig):
    """Batches of up to ``cam.batch_size`` consecutive images of one size (COCO's differ)."""
    batch, images = [], []
    for row in rows:
        image = load_rgb(row["uri"], max_side=cam.max_side)
        if batch and (len(batch) == cam.batch_size or image.shape != images[0].shape):
            yield batch, images
            batch, images = [], []
        batch.append(row)
        images.append(image)
    if batch:
        yield batch, images


def evaluate_weights(runner: ModelRunner, variants: dict, run: RunDir, cam: CamConfig, thresholds) -> dict:
    manifest, classes = read_manifest(run.manifest())
    rows = [r for r in manifest.to_pylist() if r["labels"] and r["mask_uri"]]
    confusions = {name: 0 for name in variants}
    with torch.no_grad():
        for batch, images in same_size_batches(rows, cam):
            height, width = images[0].shape[:2]
            out_size = strided_size(height, width, cam.store_stride)
            # every step of the CAM is per class map, so one backbone pass with the variants'
            # weights stacked gives each variant's maps (split below), not one pass each
            stacked = torch.cat(list(variants.values()))
            all_cams = multiscale_cam(runner.model.features, stacked, runner.tensor(images), out_size,
                                      tuple(cam.scales), cam.flip)
            for name, cams in zip(variants, all_cams.split(stacked.shape[0] // len(variants), dim=1)):
                for row, maps in zip(batch, select_and_normalise(cams, [r["labels"] for r in batch])):
                    full = full_resolution(maps.numpy(), height, width)
                    gt = gt_at(load_mask(row["mask_uri"]), height, width)
                    confusions[name] = confusions[name] + threshold_confusions(
                        full, gt, row["labels"], classes.num_classes, thresholds)
    out = {}
    for name, conf in confusions.items():
        scores = [scores_from_confusion(c) for c in conf]
        best = int(np.argmax([s["miou"] for s in scores]))
        out[name] = {"threshold": thresholds[best], "miou": round(scores[best]["miou"], 4),
                     "per_class_iou": np.round(scores[best]["per_class_iou"], 3).tolist()}
    return out


def main(checkpoint: str, run_dir: str = "", name: str = "recam_weight_signs") -> None:
    runner = ModelRunner(checkpoint, use_gpu=False)
    w = runner.model.head.weight.detach().flatten(1)
    w2 = runner.model.fc2.weight.detach().flatten(1)
    record = {"checkpoint": checkpoint, "signs": sign_shares(w, w2)}
    print(record["signs"])
    if run_dir:
        record["run_dir"] = run_dir
        run = RunDir(run_dir)
        with open(run.uri("config.json")) as f:
            config = json.load(f)
        record["best"] = evaluate_weights(runner, weight_variants(w, w2), run, CamConfig(**{
            **config["cam"], "scales": tuple(config["cam"]["scales"])}), list(config["eval"]["thresholds"]))
        for variant, best in record["best"].items():
            print(f"{variant:20s} thr {best['threshold']} mIoU {best['miou']} {best['per_class_iou']}")
    write_results(name, record)


if __name__ == "__main__":
    main(*sys.argv[1:4])
