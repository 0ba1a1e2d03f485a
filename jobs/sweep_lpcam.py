"""LPCAM post-processing sweep on Ray Tune over a finished run (no retraining, one feature pass).

    python jobs/sweep_lpcam.py --run-dir runs/coco_tiny --num-samples 20 --search random --scheduler asha
    python jobs/sweep_lpcam.py --run-dir runs/demo --search grid --scheduler fifo
    python jobs/sweep_lpcam.py --run-dir runs/demo --search optuna --num-samples 30 --dashboard

Writes <run-dir>/sweeps/<name>/ (TensorBoard event files per trial, results.csv/.parquet,
summary.json, miou_vs_<knob>.png) and the shared feature cache <run-dir>/sweeps/_cache/.
See docs/SWEEPS.md.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.stages.sweep import run_lpcam_sweep, start_ray  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a finished run (jobs/lpcam_coco.py) with maps/cam")
    p.add_argument("--num-samples", type=int, default=20, help="trials (grid: ignored, the grid sets them)")
    p.add_argument("--search", default="random", choices=["random", "grid", "optuna"])
    p.add_argument("--scheduler", default="asha", choices=["asha", "fifo"])
    p.add_argument("--name", default="", help="sweep name (default lpcam_<search>_<scheduler>)")
    p.add_argument("--metric", default="miou", choices=["miou", "sel_miou"],
                   help="what the search and ASHA maximise; sel_miou = the fair protocol's selection subset")
    p.add_argument("--cpus-per-trial", type=float, default=0.5)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--reports", type=int, default=8, help="progressive reports to Tune per trial (ASHA's time unit)")
    p.add_argument("--grid", default="", help='JSON grid for --search grid, e.g. {"tau": [0.1, 0.2], "k": [8]}')
    p.add_argument("--no-baseline", action="store_true", help="do not evaluate the run's own LPCAM config first")
    p.add_argument("--fused-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on http://127.0.0.1:8265")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    start_ray(args.dashboard)
    summary = run_lpcam_sweep(args.run_dir, args.num_samples, args.search, args.scheduler, args.name,
                              args.cpus_per_trial, args.max_concurrent, args.reports, args.seed,
                              metric=args.metric, baseline=not args.no_baseline,
                              grid=json.loads(args.grid) if args.grid else None, fused_dtype=args.fused_dtype)
    print(json.dumps({k: summary[k] for k in ("trials", "complete", "papers_protocol", "fair", "timings_s")},
                     indent=1, default=str))
