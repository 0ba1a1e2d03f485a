"""CAM extraction ceiling: how close does the extraction stage come to bare forward passes?

(a) bare ``model.features`` over the pre-resized inputs of every scale and flip;
(b) the CAM map function ``build_map_fn("cam", ...)`` on the same batch (adds resizing,
    flips, the CAM conv, upsampling and normalisation);
(c) the whole Ray Data stage ``extract_maps`` on a demo run directory, 1 and 2 actors.

Targets: (b)/(a) and (c)/(a) >= 0.8; 2 actors / 1 actor = 1.8x where the hardware allows.

    PYTHONPATH=. .venv/bin/python benchmarks/extraction_throughput.py --max-wait 60

No checkpoint needed: random tiny weights and the ImageNet EfficientNet-Lite0 backbone (the
cost does not depend on the weights); (c) builds its own demo run directory in ``--work-dir``.
CPU only.
"""
from __future__ import annotations

import argparse
import shutil

import torch

from _common import add_load_args, measured, ratio, scratch_dir, shard_steady_rate, show, start_ray, timed
from _models import SCALES, demo_images, effnet_model, random_batch, scale_inputs, tiny_model, to_tensor
from wsss_ray.cams.cam import strided_size
from wsss_ray.cams.registry import build_map_fn


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny-batch", type=int, default=16)
    p.add_argument("--effnet-batch", type=int, default=4)
    p.add_argument("--effnet-size", default="448x336", help="WIDTHxHEIGHT of the EfficientNet-Lite0 batch")
    p.add_argument("--threads", default="1,2", help="torch thread counts for (a) and (b)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (tiny)")
    p.add_argument("--effnet-repeats", type=int, default=1, help="timed runs per measurement, no warm-up (effnet)")
    p.add_argument("--stage-images", type=int, default=320)
    p.add_argument("--stage-actors", default="1,2")
    p.add_argument("--stage-repeats", type=int, default=1)
    p.add_argument("--work-dir", default=scratch_dir("extraction"), help="scratch directory (emptied first)")
    p.add_argument("--skip-effnet", action="store_true")
    p.add_argument("--skip-stage", action="store_true")
    add_load_args(p)
    return p.parse_args()


# ------------------------------------------------------------------ (a) and (b): one process


def bare_forward(model, inputs: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for x in inputs:
            model.features(x)


def map_call(fn, images: torch.Tensor, classes: list, out_size: tuple) -> None:
    with torch.no_grad():
        fn(images, classes, out_size)


def compare_batch(name: str, model, images: torch.Tensor, classes: list, threads: list[int], repeats: int,
                  warmup: int = 1) -> dict:
    """(a) bare forward and (b) CAM map function on one batch, per thread count."""
    inputs = scale_inputs(images, SCALES, True)
    fn = build_map_fn("cam", model, {"scales": SCALES, "flip": True})
    out_size = strided_size(*images.shape[-2:], 4)
    n = images.shape[0]
    print(f"{name}: batch {tuple(images.shape)}, scales {SCALES} + flips", flush=True)
    result = {"batch_shape": list(images.shape), "by_threads": {}}
    for t in threads:
        torch.set_num_threads(t)
        bare = timed(lambda: bare_forward(model, inputs), repeats, warmup)
        full = timed(lambda: map_call(fn, images, classes, out_size), repeats, warmup)
        row = {"bare_forward": bare, "cam_map_fn": full,
               "bare_images_per_s": n / bare["median_s"], "map_fn_images_per_s": n / full["median_s"]}
        row["map_fn_over_bare"] = ratio(row["map_fn_images_per_s"], row["bare_images_per_s"])
        result["by_threads"][str(t)] = row
        show(f"[{t} thread] (a) bare forward", row["bare_images_per_s"], "images/s")
        show(f"[{t} thread] (b) CAM map fn", row["map_fn_images_per_s"], "images/s")
        show(f"[{t} thread] (b)/(a)", row["map_fn_over_bare"])
    return result


def tiny_case(args, threads) -> dict:
    model, cfg = tiny_model()
    images, _, labels = demo_images(args.tiny_batch)
    return compare_batch("tiny @112", model, to_tensor(images, cfg), labels, threads, args.repeats)


def effnet_case(args, threads) -> dict:
    width, height = (int(v) for v in args.effnet_size.split("x"))
    model, _ = effnet_model()
    images = random_batch(args.effnet_batch, height, width)
    classes = [[0, 5]] * args.effnet_batch       # two GT classes per image
    return compare_batch(f"efficientnet_lite0 @{width}x{height}", model, images, classes, threads,
                         args.effnet_repeats, warmup=0)


# ------------------------------------------------------------------ (c): the Ray Data stage


def stage_run_dir(args) -> tuple:
    """A demo run directory limited to ``--stage-images`` and a random tiny checkpoint."""
    from wsss_ray.config import DatasetConfig, ModelConfig
    from wsss_ray.models.checkpoint import save_classifier
    from wsss_ray.models.classifier import build_classifier
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.manifest import build_manifest
    shutil.rmtree(args.work_dir, ignore_errors=True)
    run = RunDir(args.work_dir)
    build_manifest(run, DatasetConfig(kind="demo", demo_size="full", limit=args.stage_images))
    torch.manual_seed(0)
    save_classifier(build_classifier("tiny", "none", 5), ModelConfig(), 5, run.checkpoint("cam"))
    return run, run.checkpoint("cam")


def stage_once(run, checkpoint: str, actors: int, tag: str) -> dict:
    from wsss_ray.config import CamConfig
    from wsss_ray.stages.extract import extract_maps
    cfg = CamConfig(num_actors=actors, actor_cpus=1.0, batch_size=16)
    info = extract_maps(run, f"cam_{tag}", "cam", checkpoint, cfg)
    steady = shard_steady_rate(run.uri("maps", f"cam_{tag}"))
    return {"images": info["images"], "seconds": info["seconds"], "images_per_s": info["images"] / info["seconds"],
            "steady": steady}


def stage_case(args) -> dict:
    torch.set_num_threads(2)
    run, checkpoint = stage_run_dir(args)
    start_ray(num_cpus=4)
    print(f"stage: extract_maps on {args.stage_images} demo images (warm-up run first)", flush=True)
    stage_once(run, checkpoint, 1, "warmup")           # Ray Data start-up, worker pool, imports
    result = {}
    for actors in (int(a) for a in args.stage_actors.split(",")):
        runs = [stage_once(run, checkpoint, actors, f"{actors}a_r{i}") for i in range(args.stage_repeats)]
        best = max(runs, key=lambda r: r["images_per_s"])
        steady = max(r["steady"]["images_per_s"] for r in runs)
        result[str(actors)] = {"runs": runs, "images_per_s": best["images_per_s"], "steady_images_per_s": steady}
        show(f"[{actors} actor(s)] (c) extract_maps stage, wall", best["images_per_s"], "images/s")
        show(f"[{actors} actor(s)] (c) same, steady state (shard times)", steady, "images/s")
    return result


def summarise(out: dict) -> dict:
    """The ratios the targets are stated in."""
    tiny = out["tiny"]["by_threads"]
    summary = {}
    for t, row in tiny.items():
        summary[f"tiny_map_fn_over_bare_{t}thread"] = row["map_fn_over_bare"]
    if "effnet" in out:
        for t, row in out["effnet"]["by_threads"].items():
            summary[f"effnet_map_fn_over_bare_{t}thread"] = row["map_fn_over_bare"]
    stage = out.get("stage")
    if stage:
        if "1" in stage and "1" in tiny:
            summary["stage_1actor_over_bare_1thread"] = ratio(stage["1"]["images_per_s"], tiny["1"]["bare_images_per_s"])
        if "2" in stage and "1" in tiny:
            summary["stage_2actors_over_2x_bare_1thread"] = ratio(stage["2"]["images_per_s"],
                                                                 2 * tiny["1"]["bare_images_per_s"])
        if "2" in stage and "2" in tiny:
            summary["stage_2actors_over_bare_2threads"] = ratio(stage["2"]["images_per_s"], tiny["2"]["bare_images_per_s"])
        if "1" in stage and "2" in stage:
            summary["stage_2actors_over_1actor"] = ratio(stage["2"]["images_per_s"], stage["1"]["images_per_s"])
            summary["stage_steady_2actors_over_1actor"] = ratio(stage["2"]["steady_images_per_s"],
                                                                stage["1"]["steady_images_per_s"])
        if "1" in stage and "1" in tiny:
            summary["stage_steady_1actor_over_bare_1thread"] = ratio(stage["1"]["steady_images_per_s"],
                                                                     tiny["1"]["bare_images_per_s"])
    if "1" in tiny and "2" in tiny:
        summary["bare_2threads_over_1thread"] = ratio(tiny["2"]["bare_images_per_s"], tiny["1"]["bare_images_per_s"])
    return summary


def run_all(args) -> dict:
    threads = [int(t) for t in args.threads.split(",")]
    out = {"tiny": tiny_case(args, threads)}
    if not args.skip_effnet:
        out["effnet"] = effnet_case(args, threads)
    if not args.skip_stage:
        out["stage"] = stage_case(args)
    out["summary"] = summarise(out)
    print("summary:", flush=True)
    for key, value in out["summary"].items():
        show(key, value)
    return out


def main() -> None:
    args = parse_args()
    measured("extraction_throughput", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
