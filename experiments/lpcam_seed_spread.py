"""How much LPCAM's mIoU moves with the k-means seed alone, on a finished run.

Everything else fixed (the run's classifier, CAM, features and LPCAM config), each seed gives
new k-means centres, so a new prototype selection and new maps. The maps are computed from
the sweep's feature cache (``stages.sweep``: built once, then every seed costs a clustering
and a post-processing pass, no backbone work) and scored as the evaluation stage scores them
(best threshold on the run's grid). The spread says how far apart two correct
implementations may land when only their k-means differs (initialisation, iteration count):

    PYTHONPATH=. .venv/bin/python experiments/lpcam_seed_spread.py runs/coco_ref4 --seeds 0 1 2 3 4 5 6 7
    # the same with the best of 4 k-means runs per class (LPCAMConfig.kmeans_redo)
    PYTHONPATH=. .venv/bin/python experiments/lpcam_seed_spread.py runs/coco_ref4 --kmeans-redo 4 --tag _redo4
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from benchmarks._common import measured, show
from wsss_ray.cams.cam import strided_size
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.selection import FairAccumulator
from wsss_ray.stages.evaluate import image_confusions
from wsss_ray.stages.prototypes import select_prototypes
from wsss_ray.stages.session import ensure_ray
from wsss_ray.rundir import evaluable_images, run_config
from wsss_ray.stages.sweep_cache import (build_feature_cache, image_meta, iter_cached_images, lpcam_from_fused,
                                         trial_bank, trial_centres)
from wsss_ray.store import map_row


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--kmeans-redo", type=int, default=0, help="LPCAMConfig.kmeans_redo (0: the run's)")
    p.add_argument("--tag", default="", help="results name suffix: experiments/results/lpcam_seed_spread<tag>.json")
    p.add_argument("--max-wait", type=float, default=60.0)
    return p.parse_args()


def seed_score(run: RunDir, cfg, masks: dict, thresholds, num_classes: int, stride: int, head: np.ndarray) -> dict:
    _, info = select_prototypes(trial_centres(run, cfg, head), num_classes, cfg)
    bank, meta = trial_bank(run, cfg), image_meta(run)
    acc = FairAccumulator(thresholds, num_classes, set())
    for image_id, fused in iter_cached_images(run, set(masks)):
        m = meta[image_id]
        maps = lpcam_from_fused(fused, bank, m["classes"], strided_size(m["height"], m["width"], stride), cfg.fg_only)
        row = map_row(image_id, m["classes"], m["height"], m["width"], maps.numpy())
        acc.add(image_id, image_confusions(row, masks[image_id], num_classes, thresholds))
    scores = acc.metrics()
    return {"miou": scores["miou"], "threshold": scores["best_threshold"], "images": scores["images"],
            "fallback_classes": len(info["fallback_classes"])}


def run_all(args) -> dict:
    run = RunDir(args.run_dir)
    config = run_config(run)
    ensure_ray()
    cache = build_feature_cache(run)
    _, _, masks = evaluable_images(run)
    model, _, meta = load_classifier(run.uri("checkpoints", "cam"))
    head = model.head.weight.detach().flatten(1).numpy()
    out = {}
    for seed in args.seeds:
        cfg = dataclasses.replace(config["lpcam"], seed=seed)
        if args.kmeans_redo:
            cfg = dataclasses.replace(cfg, kmeans_redo=args.kmeans_redo)
        out[seed] = seed_score(run, cfg, masks, config["eval"].thresholds, meta["num_classes"],
                               config["cam"].store_stride, head)
        show(f"seed {seed}: mIoU (thr), fall-back classes",
             f"{out[seed]['miou']:.4f} ({out[seed]['threshold']:.2f}), {out[seed]['fallback_classes']}")
    mious = np.array([r["miou"] for r in out.values()])
    summary = {"mean": float(mious.mean()), "std": float(mious.std(ddof=1)) if len(mious) > 1 else 0.0,
               "min": float(mious.min()), "max": float(mious.max())}
    show("mIoU mean / std / min / max", f"{summary['mean']:.4f} / {summary['std']:.4f} / "
                                        f"{summary['min']:.4f} / {summary['max']:.4f}")
    return {"run_dir": args.run_dir, "cache_reused": cache.get("reused", False), "by_seed": out, "summary": summary}


def main() -> None:
    args = parse_args()
    measured(f"lpcam_seed_spread{args.tag}", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
