"""A 20-configuration LPCAM sweep against one LPCAM post-processing run (issue target: <= 2x).

From a finished run of jobs/lpcam_coco.py (with checkpoints/cam and maps/cam), two fresh
copies are made, each holding only config.json, manifest/, gt_masks/, checkpoints/cam and
maps/cam + eval/cam.json:

- copy A: the main job again with ``--methods cam,lpcam`` (the job arguments after ``--``),
  which skips what exists and runs feature sampling, clustering, selection, LPCAM maps and
  their evaluation: one LPCAM post-processing;
- copy B: ``jobs/sweep_lpcam.py --num-samples 20 --search random --scheduler asha``, which
  builds its feature cache inside the measurement.

CPU seconds (user + system of the job and every descendant, sampled every 0.5 s) and wall
seconds of each are reported; CPU seconds are the figure to trust on a shared machine.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_cost.py --max-wait 60 runs/coco_tiny_ref -- \\
        --coco-root ../shared/data/coco_tiny --split train+val --class-subset voc20 --protocol reference
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from _common import BENCH_DIR, OtherLoad, add_load_args, measured, ratio, scratch_dir, show

KEEP = ("config.json", "manifest", "gt_masks", os.path.join("checkpoints", "cam"), os.path.join("maps", "cam"),
        os.path.join("eval", "cam.json"))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("job_args", nargs=argparse.REMAINDER, help="-- then the main job's dataset arguments")
    p.add_argument("--work-dir", default=scratch_dir("sweep_cost"), help="scratch directory for the two run copies")
    p.add_argument("--num-samples", type=int, default=20)
    add_load_args(p)
    return p.parse_args()


def fresh_copy(run_dir: str, target: str) -> str:
    shutil.rmtree(target, ignore_errors=True)
    for item in KEEP:
        src, dst = os.path.join(run_dir, item), os.path.join(target, item)
        if not os.path.exists(src):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
    return target


def cpu_and_wall(cmd: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR.parent))
    with OtherLoad() as load:
        start_cpu, start = load._mine(), time.perf_counter()
        done = subprocess.run(cmd, cwd=BENCH_DIR.parent, env=env, capture_output=True, text=True)
        cpu, wall = load._mine() - start_cpu, time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {"cpu_s": cpu, "wall_s": wall, "command": " ".join(cmd)}


def run_all(args) -> dict:
    job_args = [a for a in args.job_args if a != "--"]
    copy_a = fresh_copy(args.run_dir, os.path.join(args.work_dir, "one_lpcam"))
    copy_b = fresh_copy(args.run_dir, os.path.join(args.work_dir, "sweep"))
    one = cpu_and_wall([sys.executable, "jobs/lpcam_coco.py", *job_args, "--methods", "cam,lpcam",
                        "--run-dir", copy_a])
    sweep = cpu_and_wall([sys.executable, "jobs/sweep_lpcam.py", "--run-dir", copy_b, "--num-samples",
                          str(args.num_samples), "--search", "random", "--scheduler", "asha"])
    out = {"one_lpcam": one, "sweep": sweep, "cpu_ratio": ratio(sweep["cpu_s"], one["cpu_s"]),
           "wall_ratio": ratio(sweep["wall_s"], one["wall_s"])}
    show("one LPCAM post-processing: CPU s / wall s", f"{one['cpu_s']:.0f} / {one['wall_s']:.0f}")
    show(f"sweep of {args.num_samples}: CPU s / wall s", f"{sweep['cpu_s']:.0f} / {sweep['wall_s']:.0f}")
    show("sweep / one run, CPU (target <= 2)", out["cpu_ratio"])
    show("sweep / one run, wall", out["wall_ratio"])
    return out


def main() -> None:
    args = parse_args()
    measured("sweep_cost", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
