"""What the authors' scale pyramid costs: the CAM map function on real coco_tiny photos with
``CamConfig.resample="pil"`` (each scale resized from the uint8 image with PIL bicubic, then
normalised: the default) against ``"torch"`` (the normalised tensor resized with torch bicubic),
the two alternated image by image in one run so that the machine's drift cancels in the ratio.

The clock covers the whole map call from uint8 images: building the input (the pyramid, or
the scale-1.0 batch) and the forwards; the backbone is the real EfficientNet-Lite0.

    PYTHONPATH=. .venv/bin/python benchmarks/pyramid_cost.py --images 12   # -> results/pyramid_cost.json
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._common import COCO_TINY, measured, show
from wsss_ray.cams.cam import network_inputs, strided_size
from wsss_ray.cams.registry import build_map_fn
from wsss_ray.models.classifier import build_classifier
from wsss_ray.models.effnet_lite import IMAGENET_MEAN_STD

SCALES = (1.0, 0.5, 1.5, 2.0)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco-root", default=COCO_TINY)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-wait", type=float, default=60.0)
    return p.parse_args()


def one_call(fn, image: np.ndarray, resample: str) -> float:
    mean, std = IMAGENET_MEAN_STD
    start = time.perf_counter()
    with torch.no_grad():
        x = network_inputs([image], mean, std, SCALES, resample)
        fn(x, [[0]], strided_size(*image.shape[:2], 4))
    return time.perf_counter() - start


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    net = build_classifier("efficientnet_lite0", "imagenet", 20).eval()
    fn = build_map_fn("cam", net, {"scales": SCALES, "flip": True})
    paths = sorted(Path(args.coco_root, "val2017").glob("*.jpg"))[:args.images]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    one_call(fn, images[0], "pil")          # warm-up
    times = {"pil": [], "torch": []}
    for i, image in enumerate(images):
        order = ("pil", "torch") if i % 2 == 0 else ("torch", "pil")
        for resample in order:
            times[resample].append(one_call(fn, image, resample))
    ratios = [a / b for a, b in zip(times["pil"], times["torch"])]
    out = {"images": len(images), "threads": args.threads,
           "seconds_per_image": {k: statistics.median(v) for k, v in times.items()},
           "pil_over_torch_median": statistics.median(ratios), "pil_over_torch_all": ratios}
    show("seconds per image, pil / torch", f"{out['seconds_per_image']['pil']:.3f} / "
                                           f"{out['seconds_per_image']['torch']:.3f}")
    show("pil / torch (median of per-image ratios)", f"{out['pil_over_torch_median']:.3f}")
    return out


def main() -> None:
    args = parse_args()
    measured("pyramid_cost", args, lambda: run(args))


if __name__ == "__main__":
    main()
