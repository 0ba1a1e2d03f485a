"""InferCam's unite step on a finished run: each patch's map normalised to a peak of 1 before
pasting (the paper and the authors' code) against ``unite="scaled"`` (each patch's map times its
raw first-round peak, so a patch with little of the object stays dim; normalised once, after).

Extracts the split-only variant both ways into the run (``maps/infercam_split_pp``,
``maps/infercam_split_scaled``; a rerun reuses them), with the run's checkpoint and CAM config,
and scores them and the run's own CAM on the full threshold grid (0.05 .. 0.95):

    PYTHONPATH=. .venv/bin/python experiments/infercam_unite.py runs/coco_inf40 --tag coco
    PYTHONPATH=. .venv/bin/python experiments/infercam_unite.py runs/demo_all --with-iterate --tag demo
    PYTHONPATH=. .venv/bin/python experiments/infercam_unite.py runs/demo_all --authors-code --tag demo_code

``--from-cam-maps`` repeats every split variant (``<name>_cm``) with its centres read from the
run's stored 8-bit CAM maps, as the main job does, to show what that precision costs.

``--erase-scales 1.0`` adds iterate-only and both switches with the erased rounds (2..5) inferred
at those scales only (``erase_scales``, a cost lever that is not the paper's), the first round
at the run's scales as usual.

``--authors-code`` adds the procedure of the authors' code, which the paper's own wording does
not pin down: one erase mask per patch over all the image's classes (``erase="union"``) and no
split for three or more classes (``three_plus="none"``), iterate-only and with both switches,
next to the paper's per-class procedure with the same switches.

``--variant NAME:KEY=VALUE,...`` (repeatable) adds ``maps/infercam_NAME`` with any
InferCamConfig options, written as for the job's ``--infercam``, e.g.
``--variant split_b40:iterate=false,buffer_one=40,buffer_two=80``. ``--by-classes`` also scores
every map on the images with one, two and three or more GT classes separately (each subset's own
best threshold), to see which images a split or an erasing rule helps or hurts.
``--no-unite-pair`` skips the split-only pair above (two extractions), for a run that only
compares ``--variant`` maps with CAM.
"""
from __future__ import annotations

import argparse
import time

from benchmarks._common import measured, show
from wsss_ray.cli import parse_options, parse_scales
from wsss_ray.config import EvalConfig, InferCamConfig, to_dict
from wsss_ray.data.manifest import read_manifest
from wsss_ray.rundir import RunDir
from wsss_ray.stages.evaluate import evaluate_maps
from wsss_ray.stages.extract import extract_maps
from wsss_ray.stages.session import ensure_ray
from wsss_ray.rundir import run_config

VARIANTS = {"infercam_split_pp": {"split": True, "iterate": False, "unite": "per_patch"},
            "infercam_split_scaled": {"split": True, "iterate": False, "unite": "scaled"}}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--with-iterate", action="store_true", help="also both switches on, both ways")
    p.add_argument("--authors-code", action="store_true", help="also the authors' code's erasing and splits")
    p.add_argument("--from-cam-maps", action="store_true", help="also each split variant with stored-map centres")
    p.add_argument("--erase-scales", default="", metavar="S[/S...]",
                   help="also iterate only and both switches with the erased rounds at these scales")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="also maps/infercam_NAME with these InferCamConfig options (split and iterate default on)")
    p.add_argument("--by-classes", action="store_true", help="also score images with 1, 2 and 3+ classes apart")
    p.add_argument("--no-unite-pair", action="store_true",
                   help="skip the split-only pair (per patch, scaled): only CAM and the asked-for variants")
    p.add_argument("--tag", default="", help="results file infercam_unite_<tag>.json")
    p.add_argument("--max-wait", type=float, default=60.0)
    return p.parse_args()


def run_all(args) -> dict:
    run = RunDir(args.run_dir)
    config = run_config(run)
    variants = {} if args.no_unite_pair else dict(VARIANTS)
    if args.with_iterate:
        variants.update({name.replace("split", "both"): {**v, "iterate": True} for name, v in VARIANTS.items()})
    if args.authors_code:
        variants.update({"infercam_iter_pp": {"split": False, "iterate": True},
                         "infercam_both_pp": {"split": True, "iterate": True, "unite": "per_patch"},
                         "infercam_iter_code": {"split": False, "iterate": True, "erase": "union"},
                         "infercam_both_code": {"split": True, "iterate": True, "erase": "union",
                                                "three_plus": "none"}})
    if args.erase_scales:
        scales = parse_scales(args.erase_scales)
        variants.update({"infercam_iter_es": {"split": False, "iterate": True, "erase_scales": scales},
                         "infercam_both_es": {"split": True, "iterate": True, "erase_scales": scales}})
    variants.update(extra_variants(args.variant))
    baselines = {}
    if args.from_cam_maps:
        for name, v in list(variants.items()):
            if v["split"]:
                variants[f"{name}_cm"], baselines[f"{name}_cm"] = v, "cam"
    ensure_ray()
    subsets = images_by_class_count(run) if args.by_classes else {}
    out = {}
    for name in ["cam", *variants]:
        start = time.perf_counter()
        # a no-op on a finished run, except that a run made before maps recorded their recipe gets one
        kind, params = ("cam", {}) if name == "cam" else ("infercam", variants[name])
        extract_maps(run, name, kind, run.uri("checkpoints", "cam"), config["cam"], params,
                     baseline=baselines.get(name, ""))
        seconds = time.perf_counter() - start
        best = evaluate_maps(run, name, config["dataset"], EvalConfig(), write=False)["best"]
        out[name] = {"params": variants.get(name, {}), "baseline": baselines.get(name, ""), "extract_seconds": seconds,
                     **{k: best[k] for k in ("threshold", "miou", "precision", "recall", "fp", "fn")}}
        show(f"{name}: best thr, mIoU, precision, recall",
             f"{best['threshold']:.2f}, {best['miou']:.4f}, {best['precision']:.4f}, {best['recall']:.4f}")
        if subsets:
            out[name]["by_classes"] = {key: best_of(run, name, config["dataset"], ids) for key, ids in subsets.items()}
            show(f"{name}: mIoU on 1 / 2 / 3+ class images",
                 " / ".join(f"{out[name]['by_classes'][k]['miou']:.4f}" for k in subsets))
    return {"run_dir": args.run_dir, "results": out}


def extra_variants(specs) -> dict:
    """``["split_b40:iterate=false,buffer_one=40"]`` -> {"infercam_split_b40": {...}}, checked."""
    out = {}
    for spec in specs:
        name, sep, options = spec.partition(":")
        if not sep or not name.isidentifier():
            raise SystemExit(f"--variant: {spec!r} is not NAME:KEY=VALUE,...")
        out[f"infercam_{name}"] = to_dict(parse_options(options, InferCamConfig, "--variant"))
    return out


def images_by_class_count(run: RunDir) -> dict:
    """Image ids with one, two and three or more GT classes (images with a mask only)."""
    table, _ = read_manifest(run.manifest())
    groups = {"1": [], "2": [], "3+": []}
    for image_id, labels, mask in zip(*(table.column(k).to_pylist() for k in ("image_id", "labels", "mask_uri"))):
        if mask is not None and labels:
            groups["3+" if len(labels) >= 3 else str(len(labels))].append(image_id)
    return groups


def best_of(run: RunDir, name: str, dataset: str, image_ids) -> dict:
    result = evaluate_maps(run, name, dataset, EvalConfig(), image_ids=image_ids, write=False)
    best = result["best"]
    return {"images": result["num_images"], **{k: best[k] for k in ("threshold", "miou", "precision", "recall")}}


def main() -> None:
    args = parse_args()
    measured("infercam_unite" + (f"_{args.tag}" if args.tag else ""), args, lambda: run_all(args))


if __name__ == "__main__":
    main()
