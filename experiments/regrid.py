"""Re-score stored maps on the full threshold grid (0.05 .. 0.95).

The reference protocol scores on 0.05 .. 0.60 (REFERENCE_RESULTS.md), which suits CAM and
LPCAM. Methods that enlarge the maps (InferCam's max over rounds and patches) peak above
0.60, so the reference grid cuts their curve while it still rises. This script reads the
run's config and maps, scores them on the full grid and writes
``eval/<method>_fullgrid.json`` beside the reference-grid file; nothing else is touched.

    PYTHONPATH=. .venv/bin/python experiments/regrid.py runs/coco_inf40 cam infercam infercam_split infercam_iter
"""
from __future__ import annotations

import argparse

from wsss_ray.config import EvalConfig
from wsss_ray.rundir import RunDir
from wsss_ray.stages.evaluate import evaluate_maps
from wsss_ray.rundir import run_config


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("methods", nargs="+")
    args = p.parse_args()
    run = RunDir(args.run_dir)
    name = run_config(run)["dataset"]          # e.g. "coco:voc20", as the pipeline names it
    print("| method | best thr (0.05..0.95) | mIoU | precision | recall |")
    print("|---|---|---|---|---|")
    for method in args.methods:
        result = evaluate_maps(run, method, name, EvalConfig(), write=False)
        run.write_json(run.uri("eval", f"{method}_fullgrid.json"), result)
        b = result["best"]
        print(f"| {method} | {b['threshold']:.2f} | {b['miou']:.4f} | {b['precision']:.4f} | {b['recall']:.4f} |")


if __name__ == "__main__":
    main()
