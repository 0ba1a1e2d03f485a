"""Diagnosis: how far does adversarial climbing move the maps on a given checkpoint?

For demo images and a trained checkpoint, prints per climbing step the mean class margin
``y_k - sum_{j != k} y_j`` (summed over each pair's two copies) over all (image, GT class)
[image, mirror] pairs at scale 1.0, the pair map's peak against its start, and the
mean relative L1 change between the max-normalised AdvCAM and CAM maps (all scales, flips).

    PYTHONPATH=. .venv/bin/python experiments/advcam_climb.py CHECKPOINT_DIR [--images 16]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks._common import command_line, write_results
from benchmarks._models import SCALES, demo_images, tiny_model, to_tensor
from wsss_ray.cams.advcam import AdvCamConfig, class_margin, class_pairs, climb_step, objective_gradient
from wsss_ray.cams.cam import class_activation, strided_size, with_flips
from wsss_ray.cams.registry import build_map_fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--images", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    model, cfg = tiny_model(args.checkpoint)
    model.eval()
    images, _, labels = demo_images(args.images)
    x = to_tensor(images, cfg)
    weight = model.cam_weight("w").detach()
    owner, cls = class_pairs(labels, x.device)
    cfg_adv = AdvCamConfig()
    margins, peak_gain = [], []
    pairs, base, base_peak = with_flips(x[owner], True), None, None
    for _ in range(cfg_adv.steps + 1):          # the pair's state at t = 0 .. 27
        region, grad = objective_gradient(model.features, weight, pairs, cls, base, cfg_adv, True)
        with torch.no_grad():
            margins.append(float(class_margin(class_activation(model.features(pairs), weight), cls, 2).mean()))
        base = region if base is None else base
        peak = region.flatten(1).amax(1)
        base_peak = peak if base_peak is None else base_peak
        peak_gain.append(float((peak / base_peak.clamp_min(1e-12)).mean()))
        pairs = climb_step(pairs, grad, cfg_adv.step_size, 2)
    out_size = strided_size(images[0].shape[0], images[0].shape[1], 4)
    with torch.no_grad():
        cam = torch.cat(build_map_fn("cam", model, {"scales": SCALES})(x, labels, out_size))
        adv = torch.cat(build_map_fn("advcam", model, {"scales": SCALES})(x, labels, out_size))
    change = float(((adv - cam).abs().flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-6)).mean())
    mass = float((adv.flatten(1).mean(1) / cam.flatten(1).mean(1).clamp_min(1e-6)).mean())
    print("mean class margin at t = 0, 9, 18, 27:", [round(margins[i], 3) for i in (0, 9, 18, 27)])
    print("mean peak of the pair map / peak at t=0 at t = 9, 18, 27:", [round(peak_gain[i], 2) for i in (9, 18, 27)])
    print(f"relative L1 change of the normalised maps (AdvCAM vs CAM): {change:.3f}")
    print(f"mean map value AdvCAM / CAM: {mass:.3f}")
    write_results("advcam_climb", {"command": command_line(), "checkpoint": args.checkpoint, "copies": len(cls),
                                   "margins": margins, "peak_gain": peak_gain, "relative_l1_change": change,
                                   "mean_value_ratio": mass})


if __name__ == "__main__":
    main()
