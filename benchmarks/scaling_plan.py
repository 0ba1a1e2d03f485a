"""Scaling plan: per-image cost of each stage, disk and object-store budget, and the wall time
and dollar cost of a COCO train2014-sized flow (82,783 images) on N workers.

It runs nothing itself: it reads finished runs of ``jobs/lpcam_coco.py`` (their
``eval/summary.json`` timings, ``config.json`` and artifact sizes). Several runs can be
combined, each stage's time divided by its own run's image count (the first run listed
that timed a stage gives its figure: list the cleanest first), e.g. the coco_tiny reference run (CAM, LPCAM), its ReCAM
continuation and an InferCam run on 80 of its images:

    PYTHONPATH=. .venv/bin/python benchmarks/scaling_plan.py \
        --run-dirs runs/coco_tiny_ref,runs/coco_recam,runs/coco_inf40

Cost unit: core-seconds per image = stage wall seconds x cores the stage kept busy / images.
Every stage here saturates the machine's cores (2 actors or 2 Ray Train workers on 2 cores),
so cores = the machine's core count. Projection for N workers of C cores each, parallel
efficiency e (1.0 = perfect; PERFORMANCE.md row 1c measured 0.65 for 2 actors on a busy
2-core machine):

    T_stage = cost_stage x images / (N x C x e)        dollars = N x hours x price_per_worker_hour

The price is an input, not a measurement (``--dollars-per-worker-hour``).
"""
from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np

from _common import show, write_results
from wsss_ray.data.manifest import read_manifest
from wsss_ray.stages.chunks import plan_chunks

COCO_TRAIN2014 = 82783
PER_METHOD = ("maps", "conf", "masks")          # one sub-directory per method
PER_IMAGE = ("features", "gt_masks")
FIXED = ("prototypes", "checkpoints", "ray_train")
FLOWS = {   # the stages each flow runs, in the job's names
    "main job (CAM + LPCAM)": ("train_cam", "maps_cam", "eval_cam", "lpcam_features", "lpcam_cluster",
                               "lpcam_select", "maps_lpcam", "eval_lpcam"),
    "+ ReCAM (w*w')": ("train_recam", "maps_recam", "eval_recam"),
    "+ InferCam (split + iterate)": ("maps_infercam", "eval_infercam"),
}


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def stage_costs(run_dirs: list[str], cores: int) -> tuple[dict, dict, dict]:
    """Core-seconds per image of every timed stage, each divided by its own run's image count
    (the first run listed that timed a stage gives its figure); also each run's image count."""
    costs, images, config = {}, {}, {}
    for run in run_dirs:
        summary = json.load(open(os.path.join(run, "eval", "summary.json")))
        config = config or json.load(open(os.path.join(run, "config.json")))
        manifest, _ = read_manifest(os.path.join(run, "manifest"))
        images[run] = manifest.num_rows
        for stage, seconds in summary["timings_s"].items():
            # a stage under 0.5 s found its output there already; lpcam_features is the
            # exception: the CAM pass samples the features now, and the stage's 0 s is real
            skipped = seconds < 0.5 and stage.startswith(("train_", "maps_"))
            if skipped or stage == "manifest":
                continue
            costs.setdefault(stage, {"core_seconds_per_image": seconds * cores / images[run], "run": run})
    return costs, images, config


def disk_usage(run_dirs: list[str], images: dict) -> dict:
    """Bytes per image of per-image artifacts; whole-run bytes of the fixed ones."""
    out = {}
    for run in run_dirs:
        for kind in PER_METHOD + PER_IMAGE + FIXED:
            base = os.path.join(run, kind)
            if not os.path.isdir(base):
                continue
            names = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))) \
                if kind in PER_METHOD else [""]
            for name in names:
                size = dir_bytes(os.path.join(base, name))
                key = f"{kind}/{name}".rstrip("/")
                out.setdefault(key, {"bytes_per_image": size / images[run]} if kind not in FIXED else {"bytes": size})
    return out


def object_store_budget(run_dir: str, config: dict, job_logs: list[str]) -> dict:
    """Decoded bytes per chunk (chunk images as uint8 RGB at the extraction's max side), and
    the peak object-store use Ray Data's progress lines reported in the jobs' logs."""
    manifest, _ = read_manifest(os.path.join(run_dir, "manifest"))
    max_side = config["cam"]["max_side"] or 10 ** 9
    sizes = []
    for r in manifest.to_pylist():
        scale = min(1.0, max_side / max(r["height"], r["width"]))
        sizes.append(round(r["height"] * scale) * round(r["width"] * scale) * 3)
    chunk_images = len(json.loads(plan_chunks(manifest, 32)[0]["rows_json"]))
    peaks = {log: peak_object_store(log) for log in job_logs if os.path.exists(log)}
    return {"images_per_chunk": chunk_images, "decoded_bytes_per_image": float(np.mean(sizes)),
            "chunk_bytes": float(np.mean(sizes)) * chunk_images, "actors": config["cam"]["num_actors"],
            "peak_object_store_bytes_in_logs": peaks}


def peak_object_store(log: str) -> float:
    """Largest 'used' figure of Ray Data's 'Active & requested resources: ..., U/T object store'."""
    units = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30}
    peak = 0.0
    for m in re.finditer(r"Active & requested resources: [^,]*, ([0-9.]+)(B|KiB|MiB|GiB)/", open(log).read()):
        peak = max(peak, float(m.group(1)) * units[m.group(2)])
    return peak


def project(costs: dict, images: int, workers: list[int], cores_per_worker: int, efficiency: float,
            price: float) -> list[dict]:
    rows = []
    for flow, stages in FLOWS.items():
        missing = [st for st in stages if st not in costs]
        if missing:
            rows.append({"flow": flow, "missing_stages": missing})
            continue
        per_image = sum(costs[st]["core_seconds_per_image"] for st in stages)
        for n in workers:
            seconds = per_image * images / (n * cores_per_worker * efficiency)
            rows.append({"flow": flow, "core_seconds_per_image": per_image, "workers": n,
                         "wall_hours": seconds / 3600, "dollars": n * seconds / 3600 * price})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dirs", required=True, help="comma list of finished run directories, cleanest first")
    p.add_argument("--job-logs", default="", help="comma list of the jobs' stdout logs (peak object store)")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores of the machine that made the runs")
    p.add_argument("--images", type=int, default=COCO_TRAIN2014)
    p.add_argument("--workers", default="1,4,16,64")
    p.add_argument("--cores-per-worker", type=int, default=16)
    p.add_argument("--efficiency", type=float, default=0.65)
    p.add_argument("--dollars-per-worker-hour", type=float, default=0.68,
                   help="an input: c6i.4xlarge (16 vCPU) on-demand list price in us-east-1, as assumed here")
    args = p.parse_args()
    runs = [r for r in args.run_dirs.split(",") if os.path.exists(os.path.join(r, "eval", "summary.json"))]
    costs, images, config = stage_costs(runs, args.cores)
    print(f"runs and their images: {images}")
    for stage, c in costs.items():
        show(f"{stage} core-s/image", c["core_seconds_per_image"])
    disk = disk_usage(runs, images)
    for key, d in disk.items():
        show(f"disk {key}", d.get("bytes_per_image", d.get("bytes")) / 1024, "KiB/image" if "bytes_per_image" in d else "KiB")
    store = object_store_budget(runs[0], config, [x for x in args.job_logs.split(",") if x])
    show("decoded chunk", store["chunk_bytes"] / 2 ** 20, "MiB")
    for log, peak in store["peak_object_store_bytes_in_logs"].items():
        show(f"peak object store in {os.path.basename(log)}", peak / 2 ** 20, "MiB")
    plan = project(costs, args.images, [int(w) for w in args.workers.split(",")], args.cores_per_worker,
                   args.efficiency, args.dollars_per_worker_hour)
    for row in plan:
        if "missing_stages" in row:
            print(f"  {row['flow']}: no timing for {row['missing_stages']}")
            continue
        show(f"{row['flow']}: {row['workers']} x {args.cores_per_worker} cores",
             f"{row['wall_hours']:.2f} h, ${row['dollars']:.0f}")
    write_results("scaling_plan", {"args": vars(args), "runs": runs, "images_per_run": images,
                                   "config": {"cam": config["cam"], "train": config["train"], "model": config["model"]},
                                   "stage_costs": costs, "disk": disk, "object_store": store, "projection": plan})


if __name__ == "__main__":
    main()
