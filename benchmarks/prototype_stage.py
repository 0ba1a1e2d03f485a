"""LPCAM prototype stage cost against classifier training, and worker memory as the data doubles.

On the demo world with demo_config's settings: train the CAM classifier (Ray Train, timed),
extract CAM maps (not timed), then run the prototype stage (``sample_features`` +
``cluster_all`` + ``build_prototypes``) on the first half of the images and on all of them.
While each prototype run goes, a thread samples the resident memory (RSS) of every Ray
worker process (command line ``ray::...``) every 0.2 s.

Targets: prototype stage <= 0.1x the training time; peak worker RSS flat within 20% when the
number of images doubles.
"""
from __future__ import annotations

import argparse
import os
import shutil
import threading
import time

import psutil

from _common import add_load_args, measured, ratio, show, start_ray, stopwatch
from wsss_ray.config import DatasetConfig
from wsss_ray.rundir import RunDir
from wsss_ray.stages.pipeline import demo_config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480, help="the larger run; the smaller has half")
    p.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, seconds")
    p.add_argument("--work-dir", default="/tmp/wsss_bench/prototypes")
    add_load_args(p)
    return p.parse_args()


# ------------------------------------------------------------------ memory sampling

SYSTEM_TITLES = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}     # Ray's own agents, not workers


def ray_workers() -> list[tuple[int, str, int]]:
    """(pid, title, rss bytes) of this session's Ray worker processes: descendants of this
    driver (its raylet's children) whose title starts with 'ray::'. Other jobs' Ray
    clusters on the same machine are not counted."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
            if cmd and cmd[0].startswith("ray::") and cmd[0].split(" ")[0] not in SYSTEM_TITLES:
                found.append((proc.pid, cmd[0].split(" ")[0], proc.memory_info().rss))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class RssSampler:
    """Background thread: peak RSS per worker title, of any one worker, and of all summed."""

    def __init__(self, interval: float):
        self.interval, self.stop_flag = interval, threading.Event()
        self.peak_by_title: dict[str, int] = {}
        self.peak_single = self.peak_total = self.samples = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_flag.is_set():
            workers = ray_workers()
            for _, title, rss in workers:
                self.peak_by_title[title] = max(self.peak_by_title.get(title, 0), rss)
            self.peak_single = max([self.peak_single, *(rss for _, _, rss in workers)])
            self.peak_total = max(self.peak_total, sum(rss for _, _, rss in workers))
            self.samples += 1
            self.stop_flag.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()

    def report(self) -> dict:
        mib = 1 / 2**20
        return {"samples": self.samples, "peak_single_worker_mib": self.peak_single * mib,
                "peak_all_workers_mib": self.peak_total * mib,
                "peak_by_title_mib": {t: v * mib for t, v in sorted(self.peak_by_title.items())},
                "driver_rss_mib": psutil.Process().memory_info().rss * mib}


# ------------------------------------------------------------------ the stages


def prepare_run(directory: str, limit: int) -> RunDir:
    from wsss_ray.stages.manifest import build_manifest
    shutil.rmtree(directory, ignore_errors=True)
    run = RunDir(directory)
    build_manifest(run, DatasetConfig(kind="demo", demo_size="full", limit=limit))
    return run


def train_and_extract(run: RunDir, cfg) -> tuple[str, dict]:
    """The run's classifier (timed) and its CAM maps (not timed, the stage's input)."""
    from wsss_ray.stages.extract import extract_maps
    from wsss_ray.stages.train import train_classifier
    info, seconds = stopwatch(train_classifier, run, "cam", cfg.model, cfg.train)
    checkpoint = run.checkpoint("cam")
    extract_maps(run, "cam", "cam", checkpoint, cfg.cam)
    return checkpoint, {"wall_seconds": seconds, "fit_seconds": info.get("fit_seconds"), "epochs": cfg.train.epochs}


def prototype_stage(run: RunDir, checkpoint: str, cfg, interval: float) -> dict:
    """sample_features + cluster_all + build_prototypes, timed, with worker RSS sampled."""
    from wsss_ray.stages.prototypes import build_prototypes, cluster_all, sample_features
    parts = {}
    with RssSampler(interval) as sampler:
        start = time.perf_counter()
        _, parts["sample_features"] = stopwatch(sample_features, run, checkpoint, cfg.lpcam, cfg.cam)
        _, parts["cluster_all"] = stopwatch(cluster_all, run, checkpoint, cfg.lpcam, cfg.cam.use_gpu)
        info, parts["build_prototypes"] = stopwatch(build_prototypes, run, checkpoint, cfg.lpcam)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "parts_seconds": parts, "num_prototypes": info["num_prototypes"],
            "feature_bytes": dir_bytes(run.path("features")), "memory": sampler.report()}


def dir_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(directory) for n in names)


def half_run(args, full: RunDir) -> RunDir:
    """A run on the first half of the images, reusing the full run's CAM shards as its input."""
    run = prepare_run(os.path.join(args.work_dir, f"run{args.images // 2}"), args.images // 2)
    shutil.copytree(full.path("maps", "cam"), run.path("maps", "cam"))
    return run


def run_all(args) -> dict:
    cfg = demo_config(os.path.join(args.work_dir, "unused"))
    full = prepare_run(os.path.join(args.work_dir, f"run{args.images}"), args.images)
    start_ray(num_cpus=4)
    print(f"training the CAM classifier on {args.images} demo images ({cfg.train.epochs} epochs) ...", flush=True)
    checkpoint, train = train_and_extract(full, cfg)
    train["images"] = args.images
    show("training wall seconds", train["wall_seconds"])
    runs = {}
    for label, run in ((str(args.images // 2), half_run(args, full)), (str(args.images), full)):
        print(f"prototype stage on {label} images ...", flush=True)
        runs[label] = prototype_stage(run, checkpoint, cfg, args.interval)
        show(f"[{label} images] prototype stage seconds", runs[label]["seconds"])
        show(f"[{label} images] peak single worker RSS", runs[label]["memory"]["peak_single_worker_mib"], "MiB")
        show(f"[{label} images] peak all workers RSS", runs[label]["memory"]["peak_all_workers_mib"], "MiB")
    small, large = runs[str(args.images // 2)], runs[str(args.images)]
    summary = {"stage_over_training": ratio(large["seconds"], train["wall_seconds"]),
               "peak_single_worker_growth": ratio(large["memory"]["peak_single_worker_mib"],
                                                  small["memory"]["peak_single_worker_mib"]) - 1,
               "peak_all_workers_growth": ratio(large["memory"]["peak_all_workers_mib"],
                                                small["memory"]["peak_all_workers_mib"]) - 1,
               "feature_bytes_growth": ratio(large["feature_bytes"], small["feature_bytes"]) - 1}
    print("summary:", flush=True)
    for key, value in summary.items():
        show(key, value)
    return {"train": train, "prototype_runs": runs, "summary": summary}


def main() -> None:
    args = parse_args()
    measured("prototype_stage", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
