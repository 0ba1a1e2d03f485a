"""Diagnosis: would another demo world let ReCAM's w*w' beat CAM?

Runs the main job's demo flow (``--methods cam,recam``, the demo preset) on a variant of
the demo world and prints every method's best-threshold mIoU and per-class IoU. Variants
(the shipped world is untouched: this script binds the variant options of
``wsss_ray/data/demo.py``'s drawing functions in this process, where the manifest stage
renders the world):

- ``v2``: the world as shipped.
- ``textureC`` (e.g. ``texture1.0``, ``texture0.5``): cat and dog lose their coloured heads;
  head and body carry the class's pattern (stripes / spots) at contrast C (1.0 = the body
  pattern of v2). The class evidence then covers the whole object and only the pattern
  tells the two apart, the "confusable classes" case ReCAM's softmax loss targets.
- a ``+bird`` suffix (``v2+bird``, ``texture1.0+bird``): the bird star is larger (radius
  11-14 px instead of 7-10) and never the only object of an image, to remove the
  "no other object, so bird" shortcut seen in the bird CAMs.

    PYTHONPATH=. .venv/bin/python experiments/demo_world_variants.py texture1.0 runs/world_texture1.0

Writes ``experiments/results/demo_world_<variant>.json``.
"""
from __future__ import annotations

import functools
import json
import sys

import wsss_ray.data.demo as demo
from benchmarks._common import write_results
from wsss_ray.data.demo import BIRD
from wsss_ray.stages.pipeline import demo_config, run_pipeline


def bird_never_alone(choose):
    def chosen_classes(rng):
        chosen = choose(rng)
        if chosen == [BIRD]:
            chosen.append(int(rng.integers(0, BIRD)))
        return chosen
    return chosen_classes


def use_variant(variant: str) -> None:
    pets, _, bird = variant.partition("+")
    if pets.startswith("texture"):
        demo._draw_pet = functools.partial(demo._draw_pet, patterned_head=True,
                                           contrast=float(pets[len("texture"):]))
    elif pets != "v2":
        raise SystemExit(f"unknown variant {variant!r}: v2 or textureC, optionally +bird")
    if bird == "bird":
        demo._draw_bird = functools.partial(demo._draw_bird, radius=(11, 15))
        demo._choose_classes = bird_never_alone(demo._choose_classes)
    elif bird:
        raise SystemExit(f"unknown suffix +{bird}")


def main(variant: str, run_dir: str) -> None:
    use_variant(variant)
    cfg = demo_config(run_dir, quick=False, methods=("cam", "recam"))
    summary = run_pipeline(cfg)
    figures = {}
    for method in ("cam", "recam_w", "recam_wp", "recam_wsum", "recam_wprod"):
        with open(f"{run_dir}/eval/{method}.json") as f:
            best = json.load(f)["best"]
        figures[method] = {"threshold": best["threshold"], "miou": round(best["miou"], 4),
                           "per_class_iou": [round(x, 3) for x in best["per_class_iou"]]}
        print(variant, method, json.dumps(figures[method]), flush=True)
    write_results(f"demo_world_{variant.replace('+', '_')}", {"variant": variant, "run_dir": run_dir,
                                                             "figures": figures, "timings_s": summary.get("timings_s")})


if __name__ == "__main__":
    main(*sys.argv[1:3])
