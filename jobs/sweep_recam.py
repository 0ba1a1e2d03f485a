"""ReCAM training sweep on Ray Tune: lambda (and the FC2 learning rate) as trials, each a
TorchTrainer (Ray Train) continuing from the run's CAM checkpoint, then w*w' maps and the
seed mIoU.

    python jobs/sweep_recam.py --run-dir runs/demo --num-samples 4
    python jobs/sweep_recam.py --run-dir runs/demo --num-samples 2 --epochs 1 --num-workers 1

Checkpoints: <run-dir>/checkpoints/recam_trial_<id>/ and <run-dir>/ray_train/recam_trial_<id>/;
maps: <run-dir>/maps/recam_trial_<id>/; Tune results: <run-dir>/sweeps/<name>/. See docs/SWEEPS.md.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.stages.sweep import run_recam_sweep, start_ray  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a run with checkpoints/cam and maps/cam")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--name", default="recam")
    p.add_argument("--epochs", type=int, default=0, help="override the run's ReCAM epochs")
    p.add_argument("--num-workers", type=int, default=0, help="Ray Train workers per trial (default: the run's)")
    p.add_argument("--cpus-per-trial", type=float, default=0.5, help="the trial function's own share")
    p.add_argument("--max-concurrent", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on http://127.0.0.1:8265")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    start_ray(args.dashboard)
    summary = run_recam_sweep(args.run_dir, args.num_samples, args.name, args.epochs, args.num_workers,
                              args.cpus_per_trial, args.max_concurrent, args.seed)
    print(json.dumps({k: summary[k] for k in ("trials", "complete", "papers_protocol", "fair", "timings_s")},
                     indent=1, default=str))
