"""Pseudo masks for one method's seed maps (IRN: confident labels -> boundary head on Ray
Train -> sparse random walk; or seed + dense CRF), scored into eval/pseudo_<name>.json.

    python jobs/pseudo_masks.py --run-dir runs/demo --method cam
    python jobs/pseudo_masks.py --run-dir runs/quick --method lpcam --quick
    python jobs/pseudo_masks.py --run-dir runs/demo --method cam --refiner crf
    ray job submit --working-dir . -- python jobs/pseudo_masks.py --run-dir s3://bucket/run --method lpcam --preset coco
"""
import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.rundir import RunDir  # noqa: E402
from wsss_ray.stages.refine import REFINE_PRESETS, make_pseudo_masks  # noqa: E402
from wsss_ray.stages.session import ensure_ray  # noqa: E402


def preset_name(args) -> str:
    """--preset, else the run's dataset kind (demo -> demo, or quick with --quick)."""
    if args.preset:
        return args.preset
    run = RunDir(args.run_dir)
    kind = run.read_json(run.uri("config.json"))["dataset"]["kind"] if run.exists(run.uri("config.json")) else "voc"
    if kind == "demo":
        return "quick" if args.quick else "demo"
    return "coco" if kind == "coco" else "voc"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--method", default="cam", help="a map set under maps/ (cam, recam, lpcam, ...)")
    p.add_argument("--quick", action="store_true", help="the quick preset (1 boundary-head epoch)")
    p.add_argument("--preset", default="", choices=["", *REFINE_PRESETS])
    p.add_argument("--refiner", default="irn", choices=["irn", "crf"])
    p.add_argument("--conf-fg", type=float, default=-1.0, help="default: the method's published preset")
    p.add_argument("--conf-bg", type=float, default=-1.0)
    p.add_argument("--crf-threshold", type=float, default=-1.0, help="crf route; default: best seed threshold")
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0, help="Ray Train workers for the boundary head")
    p.add_argument("--num-actors", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="first N labelled images only")
    p.add_argument("--checkpoint", default="", help="classifier (default: <run-dir>/checkpoints/cam)")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--strict", action="store_true")
    args = p.parse_args()
    cfg = dataclasses.replace(REFINE_PRESETS[preset_name(args)], refiner=args.refiner, conf_fg=args.conf_fg,
                              conf_bg=args.conf_bg, crf_threshold=args.crf_threshold, use_gpu=args.gpu)
    overrides = {"epochs": args.epochs, "num_workers": args.num_workers, "num_actors": args.num_actors,
                 "limit": args.limit}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v})
    ensure_ray()
    info = make_pseudo_masks(args.run_dir, args.method, cfg, checkpoint=args.checkpoint, strict=args.strict)
    print(json.dumps(info, indent=1, default=str))


if __name__ == "__main__":
    main()
