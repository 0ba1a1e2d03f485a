"""One results table for a run: every method's best-threshold seed scores (mIoU, precision,
recall, FP, FN), the paired-bootstrap 95% interval of its mIoU difference to CAM (resampling
images), and the fair protocol's mIoU (threshold chosen on a selection split, reported on the
rest). Writes eval/results_table.{json,md,png}.

    python jobs/results_table.py --run-dir runs/demo
    python jobs/results_table.py --run-dir runs/coco_tiny_ref --methods cam,lpcam,lpcam_f,recam
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.rundir import RunDir  # noqa: E402
from wsss_ray.stages.results_table import results_table  # noqa: E402
from wsss_ray.stages.session import ensure_ray  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--methods", default="", help="comma-separated map sets under maps/ (default: all)")
    p.add_argument("--baseline", default="cam")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--selection-fraction", type=float, default=0.5)
    p.add_argument("--split-seed", type=int, default=0)
    args = p.parse_args()
    run = RunDir(args.run_dir)
    if not run.exists(run.uri("config.json")):
        p.error(f"{args.run_dir} is not a run directory (no config.json): run jobs/lpcam_coco.py first")
    ensure_ray()
    results_table(run, [m for m in args.methods.split(",") if m] or None, args.baseline, args.resamples,
                  args.seed, args.selection_fraction, args.split_seed)
    print(run.read_text(run.uri("eval", "results_table.md")))


if __name__ == "__main__":
    main()
