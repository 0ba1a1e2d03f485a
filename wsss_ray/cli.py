"""Command line: ``wsss-ray run`` (the main flow) and ``wsss-ray demo-world`` (render the
demo world). Jobs under jobs/ use the same parser."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from wsss_ray.config import AdvCamConfig, CamConfig, InferCamConfig, LPCAMConfig, TrainConfig
from wsss_ray.stages.pipeline import (ALL_METHODS, DEMO_BACKBONES, RECAM_WEIGHTS, PipelineConfig, coco_config,
                                      demo_config)


def add_pipeline_args(p: argparse.ArgumentParser, default_methods: str) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="local path or URI (file://, s3://, gs://)")
    p.add_argument("--quick", action="store_true", help="tiny demo world, fewer epochs (about two minutes)")
    p.add_argument("--demo-backbone", default="tiny", choices=list(DEMO_BACKBONES),
                   help="the demo world's classifier: tiny (from scratch, the default) or efficientnet_lite0 "
                        "(ImageNet, frozen probe; ReCAM fine-tunes it; about 10x slower)")
    p.add_argument("--coco-root", default="", help="COCO 2014/2017 tree (train2017/ or train2014/, annotations/)")
    p.add_argument("--split", default="train", help="COCO split(s), e.g. train, val2014, train+val")
    p.add_argument("--class-subset", default="", choices=["", "voc20"], help="score COCO on the 20 VOC classes")
    p.add_argument("--protocol", default="coco", choices=["coco", "reference"],
                   help="reference = ../shared/REFERENCE_RESULTS.md protocol")
    p.add_argument("--input-norm", default="", choices=["", "native", "imagenet_raw"],
                   help="EfficientNet input scaling (see ModelConfig.input_norm)")
    p.add_argument("--limit", type=int, default=0, help="keep the first N images")
    p.add_argument("--methods", default=default_methods, help=f"comma list of {','.join(ALL_METHODS)}")
    p.add_argument("--epochs", type=int, default=0, help="override classifier epochs")
    p.add_argument("--num-workers", type=int, default=0, help="Ray Train workers (default: preset)")
    p.add_argument("--num-actors", type=int, default=0, help="extraction actors (default: preset)")
    p.add_argument("--gpu", action="store_true", help="one GPU per training worker and per actor")
    p.add_argument("--strict", action="store_true", help="fail fast on the first bad input item")
    p.add_argument("--segment", default="", help="comma list of methods to take on to IRN pseudo masks and "
                                                 "segmentation training (e.g. cam,lpcam)")
    p.add_argument("--refiner", default="", choices=["", "irn", "crf"],
                   help="--segment's pseudo masks (default: crf on the demo worlds, irn on real data)")
    p.add_argument("--infercam", default="", metavar="KEY=VALUE,...",
                   help="InferCamConfig options for --methods infercam, e.g. erase=union,three_plus=none "
                        "(the authors' code), unite=scaled,max_rounds=3 or erase_scales=1.0 (erased rounds at one scale)")
    p.add_argument("--infercam-ablation", action="store_true",
                   help="also extract split-only (infercam_split) and iterate-only (infercam_iter) InferCam")
    p.add_argument("--advcam", default="", metavar="KEY=VALUE,...",
                   help="AdvCamConfig options for --methods advcam, e.g. steps=8,mu=7.0")
    p.add_argument("--cam", default="", metavar="KEY=VALUE,...",
                   help="CamConfig options over the preset's, e.g. resample=torch (tensor resize, not the "
                        "authors' PIL pyramid) or scales=1.0/0.5")
    p.add_argument("--lpcam", default="", metavar="KEY=VALUE,...",
                   help="LPCAMConfig options over the preset's, e.g. k=12,tau=0.1 or fallback=best_one")
    p.add_argument("--recam-train", default="", metavar="KEY=VALUE,...",
                   help="TrainConfig options over the preset's ReCAM training, e.g. min_steps=0 (epochs only) "
                        "or cached_features=false (images with random crop offsets)")
    p.add_argument("--recam-weight", default="w*w'", choices=list(RECAM_WEIGHTS),
                   help="the class weight of ReCAM's maps (the paper's w*w' by default)")
    p.add_argument("--recam-all-weights", action="store_true",
                   help="also extract ReCAM's other weights (maps recam_w, recam_wp, recam_wsum, recam_wprod)")


def parse_bool(value: str) -> bool:
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if value.lower() not in words:
        raise ValueError(value)
    return words[value.lower()]


def parse_scales(value: str) -> tuple:
    """``"1.0/0.5"`` -> (1.0, 0.5): slash-separated, since commas separate the options."""
    return tuple(float(v) for v in value.split("/") if v)


def parse_options(text: str, cls, flag: str, base=None):
    """``"erase=union,max_rounds=3"`` -> ``cls(erase="union", max_rounds=3)`` (or ``base`` with
    those fields replaced), each value typed by the dataclass field it sets (a bad key or value
    stops the job before any work)."""
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in kinds:
            raise SystemExit(f"{flag}: {item!r} is not KEY=VALUE with KEY one of {sorted(kinds)}")
        kind = kinds[key]
        try:
            out[key] = {"bool": parse_bool, "int": int, "float": float, "tuple": parse_scales}.get(kind, str)(value)
        except ValueError:
            raise SystemExit(f"{flag}: {key}={value!r} is not a valid {kind}") from None
    try:
        return dataclasses.replace(base, **out) if base is not None else cls(**out)
    except ValueError as e:
        raise SystemExit(f"{flag}: {e}") from None


def config_from_args(args) -> PipelineConfig:
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
    if args.coco_root:
        cfg = coco_config(args.run_dir, args.coco_root, args.split, args.class_subset, args.limit, args.protocol, methods)
    else:
        cfg = demo_config(args.run_dir, args.quick, methods, getattr(args, "demo_backbone", "tiny"))
    train, cam = cfg.train, cfg.cam
    recam = parse_options(getattr(args, "recam_train", ""), TrainConfig, "--recam-train", cfg.recam_train)
    if args.epochs:
        train = dataclasses.replace(train, epochs=args.epochs)
    if args.num_workers:
        train = dataclasses.replace(train, num_workers=args.num_workers)
        recam = dataclasses.replace(recam, num_workers=args.num_workers)
    cam = parse_options(getattr(args, "cam", ""), CamConfig, "--cam", cam)
    if args.num_actors:
        cam = dataclasses.replace(cam, num_actors=args.num_actors)
    if args.gpu:
        train, recam = (dataclasses.replace(t, use_gpu=True) for t in (train, recam))
        cam = dataclasses.replace(cam, use_gpu=True)
    model = dataclasses.replace(cfg.model, input_norm=args.input_norm) if args.input_norm else cfg.model
    segment = tuple(m for m in args.segment.split(",") if m)
    lpcam = parse_options(getattr(args, "lpcam", ""), LPCAMConfig, "--lpcam", cfg.lpcam)
    return dataclasses.replace(cfg, model=model, train=train, recam_train=recam, cam=cam, lpcam=lpcam, strict=args.strict,
                               segment=segment, refiner=args.refiner, use_gpu_refine=args.gpu,
                               infercam=parse_options(args.infercam, InferCamConfig, "--infercam"),
                               infercam_ablation=args.infercam_ablation,
                               advcam=parse_options(args.advcam, AdvCamConfig, "--advcam"),
                               recam_weight=args.recam_weight, recam_all_weights=args.recam_all_weights)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wsss-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_pipeline_args(sub.add_parser("run", help="manifest -> classifier -> maps -> evaluation"), "cam,lpcam,lpcam_f")
    world = sub.add_parser("demo-world", help="render the demo world to a folder")
    world.add_argument("out_dir")
    world.add_argument("--size", default="full", choices=["full", "quick"])
    args = parser.parse_args(argv)
    if args.command == "demo-world":
        from wsss_ray.data.demo import build_demo_manifest
        rows, _, _ = build_demo_manifest(args.out_dir, args.size)
        print(f"{len(rows)} images in {args.out_dir}")
        return 0
    from wsss_ray.stages.pipeline import run_pipeline
    run_pipeline(config_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
