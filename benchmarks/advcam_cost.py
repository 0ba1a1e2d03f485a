"""AdvCAM throughput against the bare passes it needs, and its cost per image against CAM.

On demo images with the trained tiny checkpoint ``--demo-ckpt`` (default ``runs/demo/checkpoints/cam``,
made by ``bash scripts/demo``; random weights when it is missing), for
the same images, scales, flips and copy batches:

- **CAM**: the CAM map function (the extraction actor's).
- **AdvCAM**: the AdvCAM map function (defaults: 27 steps, all GT classes of a batch climb
  together, ``max_batch`` copies per pass).
- **bare passes**: only what the method cannot avoid -- per scale and per chunk of [image,
  mirror] pairs, the scale's climbing steps (13 at scale 0.5, else 27) x (forward, backward to
  the input), with a plain sum of the logits as the objective and no mask, step, clamp or
  accumulation.

Targets: AdvCAM throughput >= 0.8 of the bare passes; the cost per image against CAM is
reported (the method is tens of times dearer by construction).

    PYTHONPATH=. .venv/bin/python benchmarks/advcam_cost.py --max-wait 60
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import DEMO_CKPT, add_load_args, checkpoint_ready, measured, ratio, show
from _models import SCALES, demo_images, tiny_model, to_tensor
from wsss_ray.cams.advcam import AdvCamConfig, class_pairs, steps_at_scale
from wsss_ray.cams.cam import class_activation, scaled_batch, strided_size, with_flips
from wsss_ray.cams.registry import build_map_fn


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="images per map-function call")
    p.add_argument("--steps", type=int, default=AdvCamConfig.steps)
    p.add_argument("--max-batch", type=int, default=AdvCamConfig.max_batch)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--demo-ckpt", default=DEMO_CKPT,
                   help="trained tiny demo checkpoint directory (random weights when missing)")
    add_load_args(p)
    return p.parse_args()


def bare_passes(model, weight, images, classes, steps: int, max_batch: int) -> None:
    """The forward/backward passes AdvCAM needs, with nothing else around them."""
    owner, _ = class_pairs(classes, images.device)
    for scale in SCALES:
        level = scaled_batch(images, scale)
        for chunk in owner.split(max(1, max_batch // 2)):       # pairs: [image, mirror] per class
            x = with_flips(level[chunk], True)
            for _ in range(steps_at_scale(steps, scale)):
                with torch.enable_grad():
                    x = x.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(class_activation(model.features(x), weight).sum(), x)
                x = x + 1e-3 * grad


def seconds(fn, batches) -> float:
    start = time.perf_counter()
    for x, classes, out_size in batches:
        fn(x, classes, out_size)
    return time.perf_counter() - start


def run_all(args) -> dict:
    torch.set_num_threads(args.threads)
    trained = checkpoint_ready(args.demo_ckpt)
    model, cfg = tiny_model(args.demo_ckpt if trained else "")
    model.eval()
    images, _, labels = demo_images(args.images)
    out_size = strided_size(images[0].shape[0], images[0].shape[1], 4)
    batches = [(to_tensor(images[i:i + args.batch], cfg), labels[i:i + args.batch], out_size)
               for i in range(0, len(images), args.batch)]
    params = {"scales": SCALES, "flip": True}
    cam = build_map_fn("cam", model, params)
    adv = build_map_fn("advcam", model, {**params, "steps": args.steps, "max_batch": args.max_batch})
    weight = model.cam_weight("w").detach()
    with torch.no_grad():
        cam(*batches[0])                                  # warm-up
        t_cam = seconds(cam, batches)
        t_adv = seconds(adv, batches)
        t_bare = seconds(lambda x, c, _: bare_passes(model, weight, x, c, args.steps, args.max_batch), batches)
    n, pairs = len(images), sum(len(c) for c in labels)
    out = {"model": f"tiny, {'trained ' + args.demo_ckpt if trained else 'random weights'}", "images": n,
           "gt_classes_per_image": pairs / n, "cam_s_per_image": t_cam / n, "advcam_s_per_image": t_adv / n,
           "bare_s_per_image": t_bare / n, "throughput_vs_bare": ratio(t_bare, t_adv),
           "advcam_vs_cam": ratio(t_adv, t_cam)}
    show("GT classes per image", round(out["gt_classes_per_image"], 2))
    show("CAM / AdvCAM / bare passes, s per image",
         f"{out['cam_s_per_image']:.4f} / {out['advcam_s_per_image']:.3f} / {out['bare_s_per_image']:.3f}")
    show("AdvCAM throughput vs bare passes (target >= 0.8)", out["throughput_vs_bare"])
    show("AdvCAM cost vs CAM per image", out["advcam_vs_cam"])
    return out


def main() -> None:
    args = parse_args()
    measured("advcam_cost", args, lambda: run_all(args))


if __name__ == "__main__":
    main()
