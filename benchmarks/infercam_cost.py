"""InferCam cost per image against CAM extraction of the same images, per variant.

Calls the map functions directly (``build_map_fn("cam" | "infercam", ...)``), as the
extraction actor does, on (1) demo images with the tiny backbone and (2) coco_tiny images
at max side 448 with EfficientNet-Lite0 (when the trained checkpoint exists). Backbone
inputs and input pixels are counted through ``model.features`` to show where time goes.

Target: InferCam <= 3x CAM per image. The ``*_from_cam_maps`` variants are the job's path for the
split: centres from the CAM pass's stored maps, no second baseline inference.

    PYTHONPATH=. .venv/bin/python benchmarks/infercam_cost.py --max-wait 60

Checkpoints: ``--demo-ckpt`` (default ``runs/demo/checkpoints/cam``, made by ``bash scripts/demo``;
random weights when missing) and ``--coco-ckpt`` (default ``runs/coco_tiny/checkpoints/cam``,
made by the README's coco_tiny reference command; the coco case is skipped when missing),
with the data in ``--coco-root``.

``--variants a,b`` times a subset (with CAM), ``--tag T`` writes ``infercam_cost_T.json`` so
the full table's file stays, ``--skip-demo`` / ``--skip-coco`` time one case.

On a GPU (anyone with CUDA): ``--device cuda`` puts the model and the images on the device and
the clock waits for its queue to drain. ``--variants gpu`` is the set for the paper's kind of
figure (wall clock, where small calls may cost launch latency rather than pixels): the split,
iterate, split + iterate with 16 px buckets and with one canvas a round, the authors' code and
one-scale erased rounds. The GPU's name goes to ``machine.gpu_name`` in the JSON:

    PYTHONPATH=. python benchmarks/infercam_cost.py --device cuda --variants gpu --max-wait 5 \
        --skip-coco --demo-images 64 --tag gpu_demo
    PYTHONPATH=. python benchmarks/infercam_cost.py --device cuda --variants gpu --max-wait 5 \
        --skip-demo --coco-images 16 --tag gpu_coco
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from _common import COCO_CKPT, COCO_TINY, DEMO_CKPT, add_load_args, checkpoint_ready, measured, ratio, scratch_dir, show
from _models import SCALES, coco_rows, demo_images, effnet_model, tiny_model, to_tensor
from wsss_ray.cams.cam import strided_size
from wsss_ray.cams.registry import build_map_fn
from wsss_ray.store import decode_maps, encode_maps

# InferCam batches patches by size (bucket_px, 16 by default); "one canvas" is the earlier batching,
# every patch of a round padded to the largest, kept to show what the buckets save
VARIANTS = {"cam": None, "infercam_split": {"split": True, "iterate": False},
            "infercam_iterate": {"split": False, "iterate": True}, "infercam_both": {"split": True, "iterate": True},
            "infercam_both_one_canvas": {"split": True, "iterate": True, "bucket_px": 0},
            # the authors' code: one erase mask per patch over all the image's classes, no split for 3+
            "infercam_iterate_code": {"split": False, "iterate": True, "erase": "union"},
            "infercam_both_code": {"split": True, "iterate": True, "erase": "union", "three_plus": "none"},
            # a cost lever that is not the paper's: the erased rounds at scale 1.0 only (+ flip)
            "infercam_iterate_erase_s1": {"split": False, "iterate": True, "erase_scales": (1.0,)},
            "infercam_both_erase_s1": {"split": True, "iterate": True, "erase_scales": (1.0,)},
            # further levers (session 9): no flip in the erased rounds as well, or at most 3 inferences
            "infercam_iterate_erase_s1_noflip": {"split": False, "iterate": True, "erase_scales": (1.0,),
                                                 "erase_flip": False},
            "infercam_both_erase_s1_noflip": {"split": True, "iterate": True, "erase_scales": (1.0,),
                                              "erase_flip": False},
            "infercam_both_rounds3": {"split": True, "iterate": True, "max_rounds": 3},
            # wider buffers (112 px: a quarter of coco's 448 px side; on the demo's 112 px images every
            # patch would be the whole image, so time these with --skip-demo)
            "infercam_split_b112": {"split": True, "iterate": False, "buffer_one": 112, "buffer_two": 112},
            "infercam_both_b112_erase_s1": {"split": True, "iterate": True, "buffer_one": 112, "buffer_two": 112,
                                            "erase_scales": (1.0,)}}
# the job's path: the split's centres come from the CAM pass's stored (8-bit) maps, so the
# baseline inference is not repeated; these variants time InferCam on top of an existing CAM pass
FROM_CAM_MAPS = {"infercam_split_from_cam_maps": "infercam_split", "infercam_both_from_cam_maps": "infercam_both",
                 "infercam_both_code_from_cam_maps": "infercam_both_code",
                 "infercam_both_one_canvas_from_cam_maps": "infercam_both_one_canvas",
                 "infercam_both_erase_s1_from_cam_maps": "infercam_both_erase_s1",
                 "infercam_both_erase_s1_noflip_from_cam_maps": "infercam_both_erase_s1_noflip",
                 "infercam_both_rounds3_from_cam_maps": "infercam_both_rounds3",
                 "infercam_split_b112_from_cam_maps": "infercam_split_b112",
                 "infercam_both_b112_erase_s1_from_cam_maps": "infercam_both_b112_erase_s1"}

# ``--variants gpu``: the job's path with 16 px buckets and with one canvas a round (fewer, larger
# calls: a launch-bound GPU may prefer them), the authors' code and the one-scale erased rounds
GPU_VARIANTS = ["infercam_split_from_cam_maps", "infercam_iterate", "infercam_both_from_cam_maps",
                "infercam_both_one_canvas_from_cam_maps", "infercam_both_code_from_cam_maps",
                "infercam_both_erase_s1_from_cam_maps"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-images", type=int, default=64)
    p.add_argument("--demo-batch", type=int, default=16)
    p.add_argument("--coco-images", type=int, default=3)
    p.add_argument("--max-side", type=int, default=448)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="passes per variant, fastest kept")
    p.add_argument("--variants", default="", metavar="NAME,...",
                   help="time only these variants (and CAM); 'gpu' = the GPU set; default all")
    p.add_argument("--tag", default="",
                   help="results file infercam_cost_<tag>.json (a subset run keeps the full table's)")
    p.add_argument("--work-dir", default=scratch_dir("infercam"), help="scratch run directory for the coco manifest")
    p.add_argument("--skip-coco", action="store_true")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the model and the images live")
    p.add_argument("--demo-ckpt", default=DEMO_CKPT,
                   help="trained tiny demo checkpoint directory (random weights when missing)")
    p.add_argument("--coco-ckpt", default=COCO_CKPT,
                   help="trained EfficientNet-Lite0 coco_tiny checkpoint directory (coco case skipped when missing)")
    p.add_argument("--coco-root", default=COCO_TINY, help="coco_tiny data directory")
    add_load_args(p)
    return p.parse_args()


class CountingFeatures:
    """Wraps ``model.features``: counts calls, backbone inputs and input pixels."""

    def __init__(self, model):
        self.inner, self.calls, self.inputs, self.pixels = model.features, 0, 0, 0
        model.features = self                   # the map functions look it up at call time

    def __call__(self, x):
        self.calls += 1
        self.inputs += x.shape[0]
        self.pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
        return self.inner(x)

    def reset(self):
        self.calls = self.inputs = self.pixels = 0


def map_fn(model, variant: str):
    params = {"scales": SCALES, "flip": True}
    variant = FROM_CAM_MAPS.get(variant, variant)
    if VARIANTS[variant] is None:
        return build_map_fn("cam", model, params)
    return build_map_fn("infercam", model, {**params, **VARIANTS[variant]})


def stored_cam_maps(model, batches: list) -> list:
    """Each batch's CAM maps as the CAM pass stores them (8-bit), computed before the clock starts."""
    cam = map_fn(model, "cam")
    with torch.no_grad():
        return [[torch.from_numpy(decode_maps(encode_maps(m.cpu().numpy()), m.shape)).to(m.device)
                 for m in cam(*batch)] for batch in batches]


def drained(device: torch.device) -> None:
    """Wait for the device's queued kernels, so the clock measures work done, not work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(model, counter: CountingFeatures, variant: str, batches: list) -> dict:
    """Seconds per image over all batches (one pass; the case warmed the model up once)."""
    fn = map_fn(model, variant)
    stored = stored_cam_maps(model, batches) if variant in FROM_CAM_MAPS else [None] * len(batches)
    counter.reset()
    device = batches[0][0].device
    with torch.no_grad():
        drained(device)
        start = time.perf_counter()
        images = 0
        for (x, classes, out_size), baselines in zip(batches, stored):
            fn(x, classes, out_size, **({} if baselines is None else {"baselines": baselines}))
            images += x.shape[0]
        drained(device)
        seconds = time.perf_counter() - start
    return {"seconds_per_image": seconds / images, "images": images, "backbone_calls_per_image": counter.calls / images,
            "backbone_inputs_per_image": counter.inputs / images, "input_pixels_per_image": counter.pixels / images}


def chosen_variants(names: str) -> list:
    every = [*VARIANTS, *FROM_CAM_MAPS]
    wanted = [v for n in names.split(",") if n for v in (GPU_VARIANTS if n == "gpu" else [n])]
    unknown = sorted(set(wanted) - set(every))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {every}")
    return ["cam", *[n for n in every if n in wanted and n != "cam"]] if wanted else every


def run_case(name: str, model, batches: list, repeats: int, variants: list) -> dict:
    """Every variant timed ``repeats`` times, round-robin (so a slow spell of this shared machine
    hits all variants alike); each keeps its fastest pass."""
    counter = CountingFeatures(model)
    with torch.no_grad():
        map_fn(model, "cam")(*batches[0])            # warm-up: first-call allocations, lazy init
    out, passes = {}, {}
    for _ in range(repeats):
        for v in variants:
            row = time_variant(model, counter, v, batches)
            passes.setdefault(v, []).append(row["seconds_per_image"])
            if v not in out or row["seconds_per_image"] < out[v]["seconds_per_image"]:
                out[v] = row
    for v, row in out.items():
        row["seconds_per_image_each_pass"] = passes[v]      # the spread shows how noisy a figure is
    cam = out["cam"]
    print(f"{name}:", flush=True)
    for variant, row in out.items():
        row["cost_vs_cam"] = ratio(row["seconds_per_image"], cam["seconds_per_image"])
        row["pixels_vs_cam"] = ratio(row["input_pixels_per_image"], cam["input_pixels_per_image"])
        show(f"{variant}: s/image, x CAM (target <= 3), x CAM pixels; all passes",
             f"{row['seconds_per_image']:.4f} s, {row['cost_vs_cam']:.2f}x, {row['pixels_vs_cam']:.2f}x; "
             + " ".join(f"{t:.4f}" for t in row["seconds_per_image_each_pass"]))
    return out


def demo_batches(args, cfg) -> list:
    images, _, labels = demo_images(args.demo_images)
    out_size = strided_size(images[0].shape[0], images[0].shape[1], 4)
    return [(to_tensor(images[i:i + args.demo_batch], cfg).to(args.device), labels[i:i + args.demo_batch], out_size)
            for i in range(0, len(images), args.demo_batch)]


def coco_batches(args, cfg) -> list:
    from wsss_ray.data.images import load_rgb
    rows, _ = coco_rows(os.path.join(args.work_dir, "coco_run"), args.coco_root, "train", args.coco_images)
    batches = []
    for row in rows:
        if not row["labels"]:      # no VOC-class object: InferCam has nothing to do, CAM still runs
            continue
        image = load_rgb(row["uri"], max_side=args.max_side)
        batches.append((to_tensor([image], cfg).to(args.device), [row["labels"]], strided_size(*image.shape[:2], 4)))
    return batches


def run_all(args) -> dict:
    torch.set_num_threads(args.threads)
    trained = checkpoint_ready(args.demo_ckpt)
    model, cfg = tiny_model(args.demo_ckpt if trained else "")
    variants = chosen_variants(args.variants)
    out = {}
    if not args.skip_demo:
        out["demo"] = run_case("demo (tiny @112)", model.to(args.device), demo_batches(args, cfg), args.repeats,
                               variants)
        out["demo"]["model"] = f"tiny, {'trained ' + args.demo_ckpt if trained else 'random weights'}"
    if not args.skip_coco and checkpoint_ready(args.coco_ckpt) and os.path.isdir(args.coco_root):
        model, cfg = effnet_model(args.coco_ckpt)
        name = f"coco_tiny (efficientnet_lite0 @{args.max_side})"
        out["coco_tiny"] = run_case(name, model.to(args.device), coco_batches(args, cfg), args.repeats, variants)
        out["coco_tiny"]["model"] = f"efficientnet_lite0, trained {args.coco_ckpt}"
    elif not args.skip_coco:
        out["coco_tiny"] = {"skipped": "no trained coco checkpoint or no coco_tiny data"}
    return out


def main() -> None:
    args = parse_args()
    measured("infercam_cost" + (f"_{args.tag}" if args.tag else ""), args, lambda: run_all(args))


if __name__ == "__main__":
    main()
