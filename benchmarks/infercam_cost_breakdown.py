"""Where InferCam's cost comes from: counted work, not time (so the figures do not move with
the machine's load), per image group (1, 2, 3+ GT classes) and per variant.

For each variant and group the script counts, as the job runs it (split centres from the
CAM pass's stored maps): backbone calls and input pixels of CAM and of InferCam on the same
images, the (image, class, patch) copies InferCam plans, the unique patches and their area
against the image's, the area the erased rounds re-infer (sum over copies of (inferences - 1)
x patch area), and the inferences each copy made (how many ran to ``max_rounds``). Round 0's
patch area against the erased rounds' area shows which rule of the method puts it over the
3x target; the call counts are what a launch-bound accelerator would pay.

Target (issue 5): InferCam <= 3x CAM per image. ``benchmarks/infercam_cost.py`` times it.

    PYTHONPATH=. .venv/bin/python benchmarks/infercam_cost_breakdown.py --skip-coco --threads 1 --tag demo
    PYTHONPATH=. .venv/bin/python benchmarks/infercam_cost_breakdown.py --skip-demo --threads 1 --tag coco \
        --variants paper,paper_split_only,paper_iterate_only,stop_1pct,union_erase,no_3plus_split,authors_code,erase_scales_1

Checkpoints and data as in ``infercam_cost.py`` (``--demo-ckpt``, ``--coco-ckpt``, ``--coco-root``).
CPU only (the counts do not depend on the device).
"""
from __future__ import annotations

import argparse
import os
from collections import Counter

import torch

from _common import COCO_CKPT, COCO_TINY, DEMO_CKPT, checkpoint_ready, ratio, scratch_dir, show, write_results
from _models import SCALES, effnet_model, tiny_model
from infercam_cost import CountingFeatures, coco_batches, demo_batches
from wsss_ray.cams.infercam import InferCamConfig, infercam_run
from wsss_ray.cams.registry import build_map_fn
from wsss_ray.store import decode_maps, encode_maps

# the paper's procedure (the job's default) and one change at a time, then the authors' code
VARIANTS = {
    "paper": {},
    "paper_split_only": {"iterate": False},
    "paper_iterate_only": {"split": False},
    "stop_1pct": {"stop_fraction": 0.01},                     # the paper's text says 1 %, the code 2 %
    "union_erase": {"erase": "union"},                        # one mask per patch, not per class
    "no_3plus_split": {"three_plus": "none"},                 # 3+ class images not split
    "authors_code": {"erase": "union", "three_plus": "none"},
    "erase_scales_1": {"erase_scales": (1.0,)},               # a lever, not the paper's
    "one_canvas": {"bucket_px": 0},                           # fewer, larger calls (padding pixels)
}
GROUPS = ("1", "2", "3+")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-images", type=int, default=64)
    p.add_argument("--demo-batch", type=int, default=16)
    p.add_argument("--coco-images", type=int, default=16, help="first N coco_tiny train images (with a VOC class)")
    p.add_argument("--max-side", type=int, default=448)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="", metavar="NAME,...", help=f"default all of {list(VARIANTS)}")
    p.add_argument("--work-dir", default=scratch_dir("infercam"), help="scratch run directory for the coco manifest")
    p.add_argument("--skip-coco", action="store_true")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--tag", default="", help="results file infercam_cost_breakdown_<tag>.json")
    p.add_argument("--demo-ckpt", default=DEMO_CKPT,
                   help="trained tiny demo checkpoint directory (random weights when missing)")
    p.add_argument("--coco-ckpt", default=COCO_CKPT,
                   help="trained EfficientNet-Lite0 coco_tiny checkpoint directory (coco case skipped when missing)")
    p.add_argument("--coco-root", default=COCO_TINY, help="coco_tiny data directory")
    args = p.parse_args()
    args.device = "cpu"         # counted work, not time: infercam_cost.py's batch builders read it
    return args


def group_of(labels) -> str:
    return GROUPS[min(len(labels), 3) - 1]


def grouped(batches: list) -> dict:
    """Batches split by the GT class count of their images (the coco batches hold one image)."""
    out: dict[str, list] = {g: [] for g in GROUPS}
    for x, classes, out_size in batches:
        by_group: dict[str, list[int]] = {}
        for i, labels in enumerate(classes):
            by_group.setdefault(group_of(labels), []).append(i)
        for g, idx in by_group.items():
            out[g].append((x[idx], [classes[i] for i in idx], out_size))
    return {g: b for g, b in out.items() if b}


def stored_cam(model, counter: CountingFeatures, batches: list) -> tuple[list, dict]:
    """CAM maps as the CAM pass stores them (8-bit), and what that pass cost."""
    cam = build_map_fn("cam", model, {"scales": SCALES, "flip": True})
    counter.reset()
    with torch.no_grad():
        stored = [[torch.from_numpy(decode_maps(encode_maps(m.numpy()), m.shape)) for m in cam(*b)] for b in batches]
    return stored, {"calls": counter.calls, "pixels": counter.pixels}


def copy_area(box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def count_variant(model, counter: CountingFeatures, cfg: InferCamConfig, batches: list, stored: list) -> dict:
    """InferCam's counted work on ``batches`` (centres from ``stored``) and its plan."""
    weight = model.cam_weight("w").detach()
    counter.reset()
    images = image_area = copies = patch_area = 0
    patches: set = set()
    rounds: Counter = Counter()
    erased_area = 0.0           # sum over copies of (inferences - 1) * patch area
    for (x, classes, out_size), baselines in zip(batches, stored):
        run = infercam_run(model.features, weight, x, classes, out_size, SCALES, True, cfg, baselines)
        offset = images
        images += x.shape[0]
        image_area += x.shape[0] * x.shape[-2] * x.shape[-1]
        copies += len(run.copies)
        for c, r in zip(run.copies, run.rounds.tolist()):
            rounds[r] += 1
            erased_area += (r - 1) * copy_area(c.box)
            key = (offset + c.image, c.box)
            if key not in patches:
                patches.add(key)
                patch_area += copy_area(c.box)
    inferences = sum(r * n for r, n in rounds.items())
    return {"images": images, "calls": counter.calls, "pixels": counter.pixels, "copies": copies,
            "copies_per_image": ratio(copies, images), "patches_per_image": ratio(len(patches), images),
            "patch_area_vs_image": ratio(patch_area, image_area),
            "erased_copy_area_vs_image": ratio(erased_area, image_area), "image_area": image_area,
            "rounds_histogram": {str(r): rounds[r] for r in sorted(rounds)},
            "mean_inferences_per_copy": ratio(inferences, copies),
            "copies_at_max_rounds": ratio(rounds.get(cfg.max_rounds, 0), copies)}


def summed(rows: list, max_rounds: int) -> dict:
    """The groups' counts added up (ratios recomputed), so every image is inferred once."""
    total = {k: sum(r[k] for r in rows) for k in ("images", "calls", "pixels", "copies", "image_area")}
    hist: Counter = Counter()
    for r in rows:
        hist.update({int(k): v for k, v in r["rounds_histogram"].items()})

    def mean(key: str, weight: str) -> float:     # a per-group ratio, weighted by its denominator
        return ratio(sum(r[key] * r[weight] for r in rows), total[weight])
    return {**total, "copies_per_image": ratio(total["copies"], total["images"]),
            "patches_per_image": mean("patches_per_image", "images"),
            "patch_area_vs_image": mean("patch_area_vs_image", "image_area"),
            "erased_copy_area_vs_image": mean("erased_copy_area_vs_image", "image_area"),
            "rounds_histogram": {str(k): hist[k] for k in sorted(hist)},
            "mean_inferences_per_copy": ratio(sum(k * n for k, n in hist.items()), total["copies"]),
            "copies_at_max_rounds": ratio(hist.get(max_rounds, 0), total["copies"])}


def run_case(name: str, model, batches: list, variants: list) -> dict:
    """Each GT-class-count group inferred apart; "all" is their sum (the job batches images of
    every count together, which changes only the size buckets' padding and call counts)."""
    counter = CountingFeatures(model)
    print(f"{name}:", flush=True)
    out = {}
    for g, group_batches in grouped(batches).items():
        stored, cam = stored_cam(model, counter, group_batches)
        out[g] = {"cam": cam, "images": sum(len(b[1]) for b in group_batches)}
        for v in variants:
            out[g][v] = count_variant(model, counter, InferCamConfig(**VARIANTS[v]), group_batches, stored)
    groups = list(out)
    out["all"] = {"cam": {k: sum(out[g]["cam"][k] for g in groups) for k in ("calls", "pixels")},
                  "images": sum(out[g]["images"] for g in groups)}
    for v in variants:
        out["all"][v] = summed([out[g][v] for g in groups], InferCamConfig(**VARIANTS[v]).max_rounds)
    for g in ["all", *groups]:
        for v in variants:
            row = out[g][v]
            row["pixels_vs_cam"] = ratio(row["pixels"], out[g]["cam"]["pixels"])
            row["calls_vs_cam"] = ratio(row["calls"], out[g]["cam"]["calls"])
            show(f"[{g} classes, {out[g]['images']} images] {v}: x CAM pixels, x CAM calls, copies/img, "
                 "inferences/copy, at max rounds",
                 f"{row['pixels_vs_cam']:.2f}x, {row['calls_vs_cam']:.1f}x, {row['copies_per_image']:.1f}, "
                 f"{row['mean_inferences_per_copy']:.2f}, {row['copies_at_max_rounds']:.2f}")
    return out


def chosen(names: str) -> list:
    wanted = [n for n in names.split(",") if n] or list(VARIANTS)
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    return wanted


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    variants = chosen(args.variants)
    out = {}
    if not args.skip_demo:
        trained = checkpoint_ready(args.demo_ckpt)
        model, cfg = tiny_model(args.demo_ckpt if trained else "")
        out["demo"] = run_case("demo (tiny @112)", model, demo_batches(args, cfg), variants)
        out["demo"]["model"] = f"tiny, {'trained ' + args.demo_ckpt if trained else 'random weights'}"
    if not args.skip_coco and checkpoint_ready(args.coco_ckpt) and os.path.isdir(args.coco_root):
        model, cfg = effnet_model(args.coco_ckpt)
        out["coco_tiny"] = run_case(f"coco_tiny (efficientnet_lite0 @{args.max_side})", model,
                                    coco_batches(args, cfg), variants)
        out["coco_tiny"]["model"] = f"efficientnet_lite0, trained {args.coco_ckpt}"
    elif not args.skip_coco:
        out["coco_tiny"] = {"skipped": "no trained coco checkpoint or no coco_tiny data"}
    write_results("infercam_cost_breakdown" + (f"_{args.tag}" if args.tag else ""), {"args": vars(args), **out})


if __name__ == "__main__":
    main()
