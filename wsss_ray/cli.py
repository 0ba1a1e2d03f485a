"""Command line: ``wsss-ray run [CONFIG] [-o KEY=VALUE ...]`` (the main flow), ``wsss-ray config
show CONFIG [-o ...]`` (the resolved config as YAML) and ``wsss-ray demo-world`` (render the demo
world). Jobs under jobs/ use the same parser.

A run is configured by a YAML file (``configs/`` ships the presets; wsss_ray/config_file.py) and
dotted overrides, or by the flags below over the built-in presets; both then take the same
operational flags (--run-dir, --gpu, --strict, --num-actors, ...) and ``-o`` overrides. A bad key,
type or value stops with exit code 2 before any work."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from wsss_ray.config import (ALL_METHODS, RECAM_WEIGHTS, AdvCamConfig, CamConfig, InferCamConfig, LPCAMConfig,
                             PipelineConfig, TrainConfig)
from wsss_ray.config_file import ConfigError, load_config, preset_names, to_yaml
from wsss_ray.rundir import StaleRunError
from wsss_ray.stages.pipeline import DEMO_BACKBONES, coco_config, demo_config

# flags that choose the dataset or a method's options: with a config file, -o sets those keys
PRESET_FLAGS = ("quick", "demo_backbone", "coco_root", "split", "class_subset", "protocol", "input_norm", "limit",
                "methods", "segment", "refiner", "infercam", "infercam_ablation", "advcam", "cam", "lpcam",
                "recam_train", "recam_weight", "recam_all_weights")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set one dotted config key, the value read as YAML: -o lpcam.tau=0.25, "
                        "-o cam.scales=[1.0,0.5], -o methods=cam,lpcam (repeatable)")


def add_pipeline_args(p: argparse.ArgumentParser, default_methods: str) -> None:
    p.add_argument("--config", "-c", default="", metavar="FILE",
                   help=f"YAML config, a file or a shipped preset ({', '.join(preset_names())})")
    add_config_args(p)
    p.add_argument("--run-dir", default="", help="local path or URI (file://, s3://, gs://); default: the "
                                                 "config's run_dir (runs/demo without a config)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own output too (worker logs, Ray Data progress); default: one line a stage, "
                        "progress bars, warnings, the results table")
    p.add_argument("--allow-config-change", action="store_true",
                   help="rerun a run directory whose recorded config differs (the map stages still refuse "
                        "maps made with other options)")
    p.add_argument("--quick", action="store_true", help="tiny demo world, fewer epochs (about two minutes)")
    p.add_argument("--demo-backbone", default="tiny", choices=list(DEMO_BACKBONES),
                   help="the demo world's classifier: tiny (from scratch, the default) or efficientnet_lite0 "
                        "(ImageNet, frozen probe; ReCAM fine-tunes it; about 10x slower)")
    p.add_argument("--coco-root", default="", help="COCO 2014/2017 tree (train2017/ or train2014/, annotations/)")
    p.add_argument("--split", default="train", help="COCO split(s), e.g. train, val2014, train+val")
    p.add_argument("--class-subset", default="", choices=["", "voc20"], help="score COCO on the 20 VOC classes")
    p.add_argument("--protocol", default="coco", choices=["coco", "reference"],
                   help="reference = the reference protocol (docs/RESULTS.md; configs/coco_reference.yaml)")
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
                   help="InferCamConfig options for --methods infercam over its defaults (the authors' code), "
                        "e.g. erase=per_class,three_plus=per_class (the paper's text), bucket_px=16 (patches "
                        "batched padded: faster, changes the maps), unite=scaled,max_rounds=3 or erase_scales=1.0 "
                        "(erased rounds at one scale)")
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
            raise ConfigError(f"{flag}: {item!r} is not KEY=VALUE with KEY one of {sorted(kinds)}")
        kind = kinds[key]
        try:
            out[key] = {"bool": parse_bool, "int": int, "float": float, "tuple": parse_scales}.get(kind, str)(value)
        except ValueError:
            raise ConfigError(f"{flag}: {key}={value!r} is not a valid {kind}") from None
    try:
        return dataclasses.replace(base, **out) if base is not None else cls(**out)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None


def config_from_args(args, parser: argparse.ArgumentParser | None = None) -> PipelineConfig:
    """The run's config: the file (``--config`` or ``run``'s CONFIG), else the built-in preset the
    flags choose with the flags' options; then the operational flags and the ``-o`` overrides."""
    path = getattr(args, "config_file", "") or getattr(args, "config", "")
    if path:
        given = [f"--{f.replace('_', '-')}" for f in PRESET_FLAGS
                 if parser is not None and hasattr(args, f) and getattr(args, f) != parser.get_default(f)]
        if given:
            raise ConfigError(f"{', '.join(given)}: with a config file, set these with -o (e.g. -o dataset.root=..., "
                              f"-o methods=cam,lpcam, -o lpcam.tau=0.25)")
        cfg = load_config(path)
    else:
        cfg = preset_from_flags(args)
    cfg = operational_flags(cfg, args)
    return load_config(None, tuple(args.override), base=cfg, run_dir=args.run_dir or cfg.run_dir)


def preset_from_flags(args) -> PipelineConfig:
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise ConfigError(f"unknown methods {sorted(unknown)}; choose from {', '.join(ALL_METHODS)}")
    run_dir = args.run_dir or "runs/demo"
    if args.coco_root:
        cfg = coco_config(run_dir, args.coco_root, args.split, args.class_subset, args.limit, args.protocol, methods)
    else:
        cfg = demo_config(run_dir, args.quick, methods, getattr(args, "demo_backbone", "tiny"))
    recam = parse_options(getattr(args, "recam_train", ""), TrainConfig, "--recam-train", cfg.recam_train)
    model = dataclasses.replace(cfg.model, input_norm=args.input_norm) if args.input_norm else cfg.model
    segment = tuple(m for m in args.segment.split(",") if m)
    return dataclasses.replace(cfg, model=model, recam_train=recam, segment=segment, refiner=args.refiner,
                               cam=parse_options(getattr(args, "cam", ""), CamConfig, "--cam", cfg.cam),
                               lpcam=parse_options(getattr(args, "lpcam", ""), LPCAMConfig, "--lpcam", cfg.lpcam),
                               infercam=parse_options(args.infercam, InferCamConfig, "--infercam"),
                               infercam_ablation=args.infercam_ablation,
                               advcam=parse_options(args.advcam, AdvCamConfig, "--advcam"),
                               recam_weight=args.recam_weight, recam_all_weights=args.recam_all_weights)


def operational_flags(cfg: PipelineConfig, args) -> PipelineConfig:
    """Epochs, workers, actors, GPU and strictness over either source."""
    train, recam, cam = cfg.train, cfg.recam_train, cfg.cam
    if args.epochs:
        train = dataclasses.replace(train, epochs=args.epochs)
    if args.num_workers:
        train = dataclasses.replace(train, num_workers=args.num_workers)
        recam = dataclasses.replace(recam, num_workers=args.num_workers)
    if args.num_actors:
        cam = dataclasses.replace(cam, num_actors=args.num_actors)
    if args.gpu:
        train, recam = (dataclasses.replace(t, use_gpu=True) for t in (train, recam))
        cam = dataclasses.replace(cam, use_gpu=True)
    return dataclasses.replace(cfg, train=train, recam_train=recam, cam=cam, strict=cfg.strict or args.strict,
                               use_gpu_refine=cfg.use_gpu_refine or args.gpu)


def run_command(cfg: PipelineConfig, allow_config_change: bool = False, loud: bool = False) -> int:
    import os
    if loud:
        os.environ["WSSS_RAY_VERBOSE"] = "1"
    from wsss_ray.data.errors import ItemError
    from wsss_ray.stages.interrupts import JobInterrupted
    from wsss_ray.stages.pipeline import log, run_pipeline
    try:
        run_pipeline(cfg, allow_config_change=allow_config_change)
    except JobInterrupted as stop:          # a non-zero exit: a scheduler must not see a finished job
        log(stop.describe())
        return stop.exit_code
    except ItemError as bad:                # --strict: the first bad item ends the job, named
        log(f"stopped at a bad item (strict): {bad.item}: {bad.reason}")
        return 1
    return 0


def sweep_command(args) -> int:
    """``wsss-ray sweep``: the space's section picks the sweep (lpcam.* or recam_train.*)."""
    import json

    from wsss_ray.config_file import parse_space
    section, space = parse_space(tuple(args.space), args.space_file)
    if args.search == "grid" and any(not isinstance(v, list) for v in space.values()):
        raise ConfigError("a grid search takes lists of values (-s lpcam.tau=[0.1,0.25]); ranges need "
                          "--search random or optuna")
    if section == "recam_train" and args.search == "optuna":      # before Ray starts, like every usage error
        raise ConfigError("ReCAM sweeps search grid (lists) or random; optuna is for LPCAM sweeps")
    from wsss_ray.stages.sweep import run_lpcam_sweep, run_recam_sweep, start_ray
    start_ray(args.dashboard)
    if section == "lpcam":
        summary = run_lpcam_sweep(args.run_dir, args.num_samples, args.search, args.scheduler,
                                  args.name or f"lpcam_{args.search}", space=space)
    else:
        summary = run_recam_sweep(args.run_dir, args.num_samples, args.name or "recam", space=space,
                                  grid=args.search == "grid")
    print(json.dumps({k: summary.get(k) for k in ("trials", "complete", "papers_protocol", "fair")},
                     indent=1, default=str))
    return 0


def job_main(parser: argparse.ArgumentParser, argv=None) -> int:
    """A job script's body (jobs/lpcam_coco.py): the same flags, config files and exit codes."""
    try:
        args = parser.parse_args(argv)
        return run_command(config_from_args(args, parser), args.allow_config_change, args.verbose)
    except (ConfigError, StaleRunError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    try:
        return dispatch(argv)
    except (ConfigError, StaleRunError) as e:
        print(f"wsss-ray: error: {e}", file=sys.stderr)
        return 2


def dispatch(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="wsss-ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="manifest -> classifier -> maps -> evaluation")
    run.add_argument("config_file", nargs="?", default="", metavar="CONFIG",
                     help=f"YAML config file or preset name ({', '.join(preset_names())})")
    add_pipeline_args(run, "cam,lpcam,lpcam_f")
    config = sub.add_parser("config", help="config files").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config as YAML (it loads back to the same config)")
    show.add_argument("config_file", metavar="CONFIG")
    add_config_args(show)
    sweep = sub.add_parser("sweep", help="Ray Tune over a finished run: LPCAM post-processing or ReCAM training")
    sweep.add_argument("--run-dir", required=True, help="a finished run (with checkpoints/cam and maps/cam)")
    sweep.add_argument("-s", "--space", action="append", default=[], metavar="KEY=VALUES",
                       help="a dotted key and its values: a list (-s lpcam.tau=[0.1,0.25]) or a range for "
                            "random/optuna (-s lpcam.mu_f=0.5..0.97); repeatable")
    sweep.add_argument("--space-file", default="", help="YAML mapping of dotted keys to values (lists or 'lo..hi')")
    sweep.add_argument("--search", default="grid", choices=["grid", "random", "optuna"])
    sweep.add_argument("--num-samples", type=int, default=8, help="trials of random/optuna search")
    sweep.add_argument("--scheduler", default="fifo", choices=["fifo", "asha"], help="LPCAM sweeps")
    sweep.add_argument("--name", default="", help="sweep name: <run-dir>/sweeps/<name>/")
    sweep.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on http://127.0.0.1:8265")
    world = sub.add_parser("demo-world", help="render the demo world to a folder")
    world.add_argument("out_dir")
    world.add_argument("--size", default="full", choices=["full", "quick"])
    args = parser.parse_args(argv)
    if args.command == "demo-world":
        from wsss_ray.data.demo import build_demo_manifest
        rows, _, _ = build_demo_manifest(args.out_dir, args.size)
        print(f"{len(rows)} images in {args.out_dir}")
        return 0
    if args.command == "sweep":
        return sweep_command(args)
    if args.command == "config":
        print(to_yaml(load_config(args.config_file, tuple(args.override))), end="")
        return 0
    return run_command(config_from_args(args, run), args.allow_config_change, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
