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
import json
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
    p.add_argument("--repeats", type=int, default=2, help="prototype-stage runs per size")
    p.add_argument("--work-dir", default="/tmp/wsss_bench/prototypes")
    add_load_args(p)
    return p.parse_args()


# ------------------------------------------------------------------ memory sampling

SYSTEM_TITLES = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}     # Ray's own agents, not workers
STAGE_WORK = ("ChunkActor", "decode_chunk", "cluster_class")          # processes running the stage's code


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
    """Background thread: peak RSS per worker title; of any one worker and of all summed,
    over every worker and over the workers running the stage's own code (STAGE_WORK)."""

    def __init__(self, interval: float):
        self.interval, self.stop_flag = interval, threading.Event()
        self.peak_by_title: dict[str, int] = {}
        self.peaks = {"single": 0, "total": 0, "stage_single": 0, "stage_total": 0}
        self.samples = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop_flag.is_set():
            workers = ray_workers()
            for _, title, rss in workers:
                self.peak_by_title[title] = max(self.peak_by_title.get(title, 0), rss)
            stage = [rss for _, title, rss in workers if any(w in title for w in STAGE_WORK)]
            self._peak("single", max([0, *(rss for _, _, rss in workers)]))
            self._peak("total", sum(rss for _, _, rss in workers))
            self._peak("stage_single", max([0, *stage]))
            self._peak("stage_total", sum(stage))
            self.samples += 1
            self.stop_flag.wait(self.interval)

    def _peak(self, key: str, value: int) -> None:
        self.peaks[key] = max(self.peaks[key], value)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()

    def report(self) -> dict:
        mib = 1 / 2**20
        return {"samples": self.samples, "peak_single_worker_mib": self.peaks["single"] * mib,
                "peak_all_workers_mib": self.peaks["total"] * mib,
                "peak_stage_worker_mib": self.peaks["stage_single"] * mib,
                "peak_stage_workers_sum_mib": self.peaks["stage_total"] * mib,
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
            "feature_bytes": dir_bytes(run.uri("features")), "memory": sampler.report()}


def compute_only(run: RunDir, checkpoint: str, cfg, work_dir: str) -> dict:
    """The same work without Ray: FeatureProcessor over every chunk in this process (decoding
    included), then cluster_class for every class. Separates computation from Ray overhead."""
    import pyarrow as pa
    import torch
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.stages.chunks import decode_chunk, plan_chunks, unpack_images
    from wsss_ray.stages.prototypes import FeatureProcessor, cluster_class, sample_images
    manifest, classes = read_manifest(run.manifest())
    chosen = sample_images(manifest, classes.num_classes, cfg.lpcam.images_per_class, cfg.lpcam.seed)
    manifest = manifest.append_column("sample_classes", pa.array(
        [chosen.get(i, []) for i in manifest.column("image_id").to_pylist()], pa.list_(pa.int32())))
    out_dir = os.path.join(work_dir, "compute_only_features")
    shutil.rmtree(out_dir, ignore_errors=True)
    torch.set_num_threads(1)                             # one actor = one CPU
    start = time.perf_counter()
    processor = FeatureProcessor(checkpoint, run.uri("maps", "cam"), out_dir, cfg.lpcam, cfg.cam)
    for chunk in plan_chunks(manifest, 32):
        batch = decode_chunk({"chunk_id": [chunk["chunk_id"]], "rows_json": [chunk["rows_json"]]})
        with torch.no_grad():
            processor.process(chunk["chunk_id"], json.loads(chunk["rows_json"]), unpack_images(batch["images"][0]))
    features = time.perf_counter() - start
    dim = processor.model.backbone.out_channels
    _, clustering = stopwatch(lambda: [cluster_class(out_dir, c, dim, cfg.lpcam.k, cfg.lpcam.kmeans_iters,
                                                     cfg.lpcam.seed, False) for c in range(classes.num_classes)])
    return {"images": manifest.num_rows, "features_s": features, "clustering_s": clustering,
            "seconds": features + clustering, "features_ms_per_image": 1000 * features / manifest.num_rows}


def dir_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(directory) for n in names)


def half_run(args, full: RunDir) -> RunDir:
    """A run on the first half of the images, reusing the full run's CAM shards as its input."""
    run = prepare_run(os.path.join(args.work_dir, f"run{args.images // 2}"), args.images // 2)
    shutil.copytree(full.uri("maps", "cam"), run.uri("maps", "cam"))
    return run


def clear_outputs(run: RunDir) -> None:
    """Remove the stage's outputs so a repeat recomputes everything (it skips finished chunks)."""
    for part in ("features", "prototypes", "errors/features"):
        shutil.rmtree(run.uri(*part.split("/")), ignore_errors=True)


MEMORY_KEYS = ("peak_stage_worker_mib", "peak_stage_workers_sum_mib", "peak_single_worker_mib", "peak_all_workers_mib")


def combine(runs: list[dict]) -> dict:
    """Fastest repeat's time (load from other jobs only adds), largest memory peaks."""
    fastest = min(runs, key=lambda r: r["seconds"])
    return {"seconds": fastest["seconds"], "parts_seconds": fastest["parts_seconds"],
            "num_prototypes": fastest["num_prototypes"], "feature_bytes": fastest["feature_bytes"],
            **{key: max(r["memory"][key] for r in runs) for key in MEMORY_KEYS}, "runs": runs}


def summarise(train: dict, small: dict, large: dict) -> dict:
    growth = lambda key: ratio(large[key], small[key]) - 1
    return {"stage_over_training": ratio(large["seconds"], train["wall_seconds"]),
            "stage_seconds_growth": growth("seconds"), "feature_bytes_growth": growth("feature_bytes"),
            **{key.replace("_mib", "_growth"): growth(key) for key in MEMORY_KEYS}}


def run_all(args) -> dict:
    cfg = demo_config(os.path.join(args.work_dir, "unused"))
    full = prepare_run(os.path.join(args.work_dir, f"run{args.images}"), args.images)
    start_ray(num_cpus=4)
    print(f"training the CAM classifier on {args.images} demo images ({cfg.train.epochs} epochs) ...", flush=True)
    checkpoint, train = train_and_extract(full, cfg)
    train["images"] = args.images
    show("training wall seconds", train["wall_seconds"])
    sizes = {str(args.images // 2): half_run(args, full), str(args.images): full}
    repeats = {label: [] for label in sizes}
    for r in range(args.repeats):                        # interleaved: drifting load hits both sizes
        for label, run in sizes.items():
            clear_outputs(run)
            print(f"prototype stage on {label} images (repeat {r + 1}) ...", flush=True)
            repeats[label].append(prototype_stage(run, checkpoint, cfg, args.interval))
    runs = {label: combine(rs) for label, rs in repeats.items()}
    for label, res in runs.items():
        show(f"[{label} images] prototype stage seconds (fastest)", res["seconds"])
        show(f"[{label} images] peak RSS of one stage worker", res["peak_stage_worker_mib"], "MiB")
        show(f"[{label} images] peak RSS of stage workers, summed", res["peak_stage_workers_sum_mib"], "MiB")
        show(f"[{label} images] peak RSS of any worker (idle ones too)", res["peak_single_worker_mib"], "MiB")
    compute = compute_only(full, checkpoint, cfg, args.work_dir)
    show(f"[{args.images} images] same work without Ray, one thread", compute["seconds"], "s")
    summary = summarise(train, *runs.values())
    summary["compute_only_over_training"] = ratio(compute["seconds"], train["wall_seconds"])
    print("summary:", flush=True)
    for key, value in summary.items():
        show(key, value)
    return {"train": train, "prototype_runs": runs, "compute_only": compute, "summary": summary}


def main() -> None:
    args = parse_args()
    measured("prototype_stage", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
