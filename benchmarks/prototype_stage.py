"""LPCAM prototype stage cost against classifier training, and worker memory as the data doubles.

On the demo world with demo_config's settings: train the CAM classifier (Ray Train, timed),
then, on the first half of the images and on all of them, as the pipeline does:

1. the CAM pass with LPCAM's feature sampling fused in (``extract_maps(...,
   feature_sampling=...)``); the actors time the sampling part (one scale-1.0 forward of the
   sampled images, the split, the shard writes) and report it;
2. the same CAM pass without sampling: the wall-time difference cross-checks (1);
3. ``sample_features`` (nothing left to do after a fused pass), ``cluster_all``,
   ``build_prototypes``.

The stage's cost is (1)'s sampling time + (3). The stand-alone sampling stage (a Ray Data pass
of its own, for runs whose CAM maps exist already) is timed too. While the stage runs, a thread
samples the resident memory (RSS) of every Ray worker process (``ray::...``) every 0.2 s.

Targets: prototype stage <= 0.1x the training time; peak worker RSS flat within 20% when the
number of images doubles.

    PYTHONPATH=. .venv/bin/python benchmarks/prototype_stage.py --max-wait 60

No checkpoint needed: it trains its own demo classifier in ``--work-dir``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time

import psutil

from _common import add_load_args, measured, ratio, scratch_dir, show, start_ray, stopwatch
from wsss_ray.config import DatasetConfig
from wsss_ray.rundir import RunDir
from wsss_ray.stages.pipeline import demo_config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480, help="the larger run; the smaller has half")
    p.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, seconds")
    p.add_argument("--repeats", type=int, default=2, help="prototype-stage runs per size")
    p.add_argument("--work-dir", default=scratch_dir("prototypes"), help="scratch directory (emptied first)")
    add_load_args(p)
    return p.parse_args()


# ------------------------------------------------------------------ memory sampling

SYSTEM_TITLES = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}     # Ray's own agents, not workers
STAGE_WORK = ("ChunkActor", "decode_chunk", "cluster_classes")        # processes running the stage's code


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


def train(run: RunDir, cfg) -> tuple[str, dict]:
    from wsss_ray.stages.train import train_classifier
    info, seconds = stopwatch(train_classifier, run, "cam", cfg.model, cfg.train)
    return run.checkpoint("cam"), {"wall_seconds": seconds, "fit_seconds": info.get("fit_seconds"),
                                   "epochs": cfg.train.epochs}


def prototype_stage(run: RunDir, checkpoint: str, cfg, interval: float, plain_first: bool) -> dict:
    """CAM pass with and without fused sampling, then sample_features + cluster_all +
    build_prototypes; worker RSS sampled over the fused pass and the rest of the stage."""
    from wsss_ray.stages.extract import extract_maps
    from wsss_ray.stages.prototypes import build_prototypes, cluster_all, sample_features

    def plain():
        return stopwatch(extract_maps, run, "cam_plain", "cam", checkpoint, cfg.cam)[1]

    parts = {}
    if plain_first:                       # alternate the order: the first pass after a pause is slower
        parts["cam_pass_plain"] = plain()
    with RssSampler(interval) as sampler:
        fused, parts["cam_pass_fused"] = stopwatch(extract_maps, run, "cam", "cam", checkpoint, cfg.cam,
                                                   feature_sampling=cfg.lpcam)
        leftover, parts["sample_features_leftover"] = stopwatch(sample_features, run, checkpoint, cfg.lpcam, cfg.cam)
        _, parts["cluster_all"] = stopwatch(cluster_all, run, checkpoint, cfg.lpcam, cfg.cam.use_gpu)
        info, parts["build_prototypes"] = stopwatch(build_prototypes, run, checkpoint, cfg.lpcam)
    if not plain_first:
        parts["cam_pass_plain"] = plain()
    assert leftover["chunks_run"] == 0, "the fused pass left chunks unsampled"
    parts["sampling_in_cam_pass"] = fused["feature_sampling_seconds"]
    stage = parts["sampling_in_cam_pass"] + parts["sample_features_leftover"] + parts["cluster_all"] \
        + parts["build_prototypes"]
    return {"seconds": stage, "parts_seconds": parts,
            "cam_pass_wall_difference": parts["cam_pass_fused"] - parts["cam_pass_plain"],
            "num_prototypes": info["num_prototypes"], "feature_bytes": dir_bytes(run.uri("features")),
            "memory": sampler.report()}


def stand_alone_sampling(run: RunDir, checkpoint: str, cfg) -> dict:
    """The separate Ray Data sampling pass, for runs whose CAM maps exist without features."""
    from wsss_ray.stages.prototypes import sample_features
    shutil.rmtree(run.uri("features"), ignore_errors=True)
    info, seconds = stopwatch(sample_features, run, checkpoint, cfg.lpcam, cfg.cam)
    return {"seconds": seconds, "chunks_run": info["chunks_run"]}


def compute_only(run: RunDir, checkpoint: str, cfg, work_dir: str) -> dict:
    """The same work without Ray: FeatureProcessor over every chunk in this process (decoding
    included), then cluster_class for every class. Separates computation from Ray overhead."""
    import torch
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.stages.chunks import decode_chunk, unpack_images
    from wsss_ray.stages.cluster_tasks import cluster_class
    from wsss_ray.stages.prototypes import FeatureProcessor, feature_chunks
    manifest, classes = read_manifest(run.manifest())
    out_dir = os.path.join(work_dir, "compute_only_features")
    shutil.rmtree(out_dir, ignore_errors=True)
    torch.set_num_threads(1)                             # one actor = one CPU
    start = time.perf_counter()
    processor = FeatureProcessor(checkpoint, run.uri("maps", "cam"), out_dir, cfg.lpcam, cfg.cam)
    for chunk in feature_chunks(manifest, classes.num_classes, cfg.lpcam):
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


def clear_outputs(run: RunDir) -> None:
    """Remove the stage's outputs so a repeat recomputes everything (it skips finished chunks)."""
    for part in ("maps/cam", "maps/cam_plain", "features", "prototypes", "errors/features", "errors/maps_cam",
                 "errors/maps_cam_plain"):
        shutil.rmtree(run.uri(*part.split("/")), ignore_errors=True)


MEMORY_KEYS = ("peak_stage_worker_mib", "peak_stage_workers_sum_mib", "peak_single_worker_mib", "peak_all_workers_mib")


def combine(runs: list[dict]) -> dict:
    """Fastest repeat's time (load from other jobs only adds), largest memory peaks."""
    fastest = min(runs, key=lambda r: r["seconds"])
    return {"seconds": fastest["seconds"], "parts_seconds": fastest["parts_seconds"],
            "cam_pass_wall_difference": min(r["cam_pass_wall_difference"] for r in runs),
            "num_prototypes": fastest["num_prototypes"], "feature_bytes": fastest["feature_bytes"],
            **{key: max(r["memory"][key] for r in runs) for key in MEMORY_KEYS}, "runs": runs}


def summarise(train: dict, small: dict, large: dict) -> dict:
    growth = lambda key: ratio(large[key], small[key]) - 1
    by_wall = max(large["cam_pass_wall_difference"], 0.0) + large["parts_seconds"]["cluster_all"] \
        + large["parts_seconds"]["build_prototypes"]
    return {"stage_over_training": ratio(large["seconds"], train["wall_seconds"]),
            "stage_by_wall_difference_over_training": ratio(by_wall, train["wall_seconds"]),
            "stage_seconds_growth": growth("seconds"), "feature_bytes_growth": growth("feature_bytes"),
            **{key.replace("_mib", "_growth"): growth(key) for key in MEMORY_KEYS}}


def run_all(args) -> dict:
    cfg = demo_config(os.path.join(args.work_dir, "unused"))
    shutil.rmtree(args.work_dir, ignore_errors=True)
    full = prepare_run(os.path.join(args.work_dir, f"run{args.images}"), args.images)
    half = prepare_run(os.path.join(args.work_dir, f"run{args.images // 2}"), args.images // 2)
    start_ray(num_cpus=4)
    print(f"training the CAM classifier on {args.images} demo images ({cfg.train.epochs} epochs) ...", flush=True)
    checkpoint, trained = train(full, cfg)
    trained["images"] = args.images
    show("training wall seconds", trained["wall_seconds"])
    sizes = {str(args.images // 2): half, str(args.images): full}
    repeats = {label: [] for label in sizes}
    for r in range(args.repeats):                        # interleaved: drifting load hits both sizes
        for label, run in sizes.items():
            clear_outputs(run)
            print(f"prototype stage on {label} images (repeat {r + 1}) ...", flush=True)
            repeats[label].append(prototype_stage(run, checkpoint, cfg, args.interval, plain_first=r % 2 == 0))
    runs = {label: combine(rs) for label, rs in repeats.items()}
    for label, res in runs.items():
        show(f"[{label} images] prototype stage seconds (fastest)", res["seconds"])
        show(f"[{label} images] of which sampling inside the CAM pass", res["parts_seconds"]["sampling_in_cam_pass"])
        show(f"[{label} images] CAM pass wall, fused - plain (least)", res["cam_pass_wall_difference"])
        show(f"[{label} images] peak RSS of one stage worker", res["peak_stage_worker_mib"], "MiB")
        show(f"[{label} images] peak RSS of stage workers, summed", res["peak_stage_workers_sum_mib"], "MiB")
    alone = stand_alone_sampling(full, checkpoint, cfg)
    show(f"[{args.images} images] stand-alone sampling pass (a run whose CAM maps exist)", alone["seconds"], "s")
    compute = compute_only(full, checkpoint, cfg, args.work_dir)
    show(f"[{args.images} images] same work without Ray, one thread", compute["seconds"], "s")
    summary = summarise(trained, *runs.values())
    summary["stand_alone_sampling_over_training"] = ratio(alone["seconds"], trained["wall_seconds"])
    summary["compute_only_over_training"] = ratio(compute["seconds"], trained["wall_seconds"])
    print("summary:", flush=True)
    for key, value in summary.items():
        show(key, value)
    return {"train": trained, "prototype_runs": runs, "stand_alone_sampling": alone, "compute_only": compute,
            "summary": summary}


def main() -> None:
    args = parse_args()
    measured("prototype_stage", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
