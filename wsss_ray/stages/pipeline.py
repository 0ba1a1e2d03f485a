"""The whole flow as one function over a typed config: manifest -> classifier (Ray Train)
-> CAM (Ray Data) -> [ReCAM] -> [LPCAM prototypes -> LPCAM, LPCAM-F] -> [InferCam] ->
evaluation -> a Table-1-style summary. Jobs are thin wrappers around ``run_pipeline``."""
from __future__ import annotations

import dataclasses
import json
import os
import time

from wsss_ray.config import (INFERCAM_ABLATION, RECAM_WEIGHTS, DatasetConfig, InferCamConfig, PipelineConfig,
                             recam_model, to_dict)
from wsss_ray.rundir import RunDir
from wsss_ray.stages.interrupts import JobInterrupted, take_the_signals

DEMO_BACKBONES = ("tiny", "efficientnet_lite0")


def demo_config(run_dir: str, quick: bool = False, methods=("cam", "lpcam", "lpcam_f"),
                backbone: str = "tiny") -> PipelineConfig:
    """The embedded default (configs/demo.yaml, quick.yaml): the demo world, the tiny backbone
    trained from scratch. ``backbone="efficientnet_lite0"`` (configs/demo_effnet.yaml): the same
    world with the ImageNet backbone of the reference protocol, frozen for CAM, fine-tuned by
    ReCAM. The shipped YAML files are the one definition; this picks one for the legacy flags."""
    from wsss_ray.config_file import load_config
    if backbone not in DEMO_BACKBONES:
        raise ValueError(f"demo backbone {backbone!r}: choose from {DEMO_BACKBONES}")
    overrides = [f"run_dir={run_dir}", f"methods={','.join(methods)}"]
    if backbone == "efficientnet_lite0":
        name = "demo_effnet"
        overrides += ["dataset.demo_size=quick", "recam_train.epochs=3"] if quick else []
    else:
        name = "quick" if quick else "demo"
    return load_config(name, tuple(overrides))


def coco_config(run_dir: str, root: str, split: str = "train", class_subset: str = "", limit: int = 0,
                protocol: str = "coco", methods=("cam", "lpcam", "lpcam_f")) -> PipelineConfig:
    """COCO 2014/2017 (configs/coco_lpcam.yaml: the LPCAM paper's settings). ``protocol="reference"``
    is the reference protocol (configs/coco_reference.yaml: frozen ImageNet EfficientNet-Lite0 +
    linear head, Adam, 448 px, VOC-style LPCAM knobs)."""
    from wsss_ray.config_file import load_config
    name = "coco_reference" if protocol == "reference" else "coco_lpcam"
    overrides = (f"run_dir={run_dir}", f"methods={','.join(methods)}", f"dataset.root={root}",
                 f"dataset.split={split}", f"dataset.class_subset={class_subset}", f"dataset.limit={limit}")
    return load_config(name, overrides)


def recam_weights(cfg: PipelineConfig) -> dict[str, str]:
    """Maps directory -> ReCAM class weight: the chosen weight as ``recam``, the other three
    only when asked for."""
    others = {name: w for w, name in RECAM_WEIGHTS.items() if w != cfg.recam_weight} if cfg.recam_all_weights else {}
    return {"recam": cfg.recam_weight, **others}


def infercam_variants(cfg: PipelineConfig) -> dict[str, InferCamConfig]:
    """Maps directory -> InferCam config: the chosen one, and its two halves when the ablation
    is asked for."""
    ablation = INFERCAM_ABLATION if cfg.infercam_ablation else {}
    return {"infercam": cfg.infercam,
            **{name: dataclasses.replace(cfg.infercam, **switches) for name, switches in ablation.items()}}


def log(msg: str) -> None:
    print(f"[wsss_ray {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record_config(run: RunDir, cfg: PipelineConfig, allow_change: bool = False) -> None:
    """Write the resolved config (config.json, config.yaml) to the run directory; a rerun whose
    config differs from the recorded one in a key that changes results stops, naming the keys."""
    from wsss_ray.config_file import ConfigError, changed_keys, to_yaml
    path = run.uri("config.json")
    if run.exists(path) and not allow_change:
        old = run.read_json(path)
        changed = [k for k in changed_keys(old, to_dict(cfg)) if not operational_key(k) and key_in(old, k)]
        if changed:
            raise ConfigError(f"{cfg.run_dir} was made with another config: {', '.join(changed)} differ. Use a new "
                              f"--run-dir, or --allow-config-change to go on (map stages still refuse stale maps)")
    run.write_json(path, to_dict(cfg))
    run.write_text(run.uri("config.yaml"), to_yaml(cfg))


# keys that choose what runs or where, not what a stage computes: a rerun may change them
OPERATIONAL_KEYS = ("run_dir", "methods", "segment", "refiner", "recam_all_weights", "infercam_ablation", "strict",
                    "use_gpu_refine", "cam.num_actors", "cam.actor_cpus", "cam.use_gpu", "cam.batch_size",
                    "train.num_workers", "train.use_gpu", "recam_train.num_workers", "recam_train.use_gpu",
                    "train.placement", "recam_train.placement", "eval.driver_max_images",
                    "infercam.max_batch", "advcam.max_batch")


def operational_key(key: str) -> bool:
    return key in OPERATIONAL_KEYS


def key_in(data: dict, dotted: str) -> bool:
    """Whether a recorded config has the key at all (an older run directory may lack new keys)."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def check_inputs(cfg: PipelineConfig) -> None:
    """Mistakes a user can fix, found before any work: each one line that says what to do."""
    from wsss_ray.config_file import ConfigError
    data = cfg.dataset
    needed = [("root", data.root)] + ([("tags_file", data.tags_file)] if data.kind == "folder" else [])
    for key, value in needed if data.kind != "demo" else []:
        if not value:
            raise ConfigError(f"dataset.{key} is empty: give the {data.kind} dataset's {key} with -o dataset.{key}=PATH")
        if "://" not in value and not os.path.exists(value):
            raise ConfigError(f"dataset.{key} {value!r} does not exist (a local path; URIs are read as they are)")
    check_weights(cfg)


def check_weights(cfg: PipelineConfig) -> None:
    """Pretrained weights that are not on this machine stop the job here, in one line, not
    after Ray Train has retried its workers (wsss_ray never downloads)."""
    from wsss_ray.config_file import ConfigError
    from wsss_ray.models.backbones import weights_path
    try:
        weights_path(cfg.model.backbone, cfg.model.weights)
    except ValueError as e:
        first = str(e).split(". ")[0].rstrip(".")
        raise ConfigError(f"model.weights={cfg.model.weights}: {first}. Give a local state_dict file with "
                          f"-o model.weights=/path/to/{cfg.model.backbone}.pth, or -o model.weights=none "
                          f"to train from scratch") from None


def check_gpus(cfg: PipelineConfig) -> None:
    """A GPU asked for where the cluster declares none stops here, not in a pending actor."""
    from wsss_ray.config_file import ConfigError
    from wsss_ray.stages.session import cluster_gpus
    asked = (("train.use_gpu", cfg.train.use_gpu), ("recam_train.use_gpu", cfg.recam_train.use_gpu and "recam" in cfg.methods),
             ("cam.use_gpu", cfg.cam.use_gpu), ("use_gpu_refine", cfg.use_gpu_refine and bool(cfg.segment)))
    wanted = [name for name, on in asked if on]
    if wanted and cluster_gpus() == 0:
        raise ConfigError(f"{', '.join(wanted)}: the Ray cluster has no GPU; drop --gpu (torch runs on the CPUs) "
                          f"or start the cluster on nodes that declare GPUs")


def run_pipeline(cfg: PipelineConfig, allow_config_change: bool = False) -> dict:
    """The job. SIGINT/SIGTERM raise ``JobInterrupted`` (naming the stage) wherever they land."""
    from wsss_ray.stages.interrupts import interrupts_end_the_job
    started = time.time()
    try:
        with interrupts_end_the_job():
            return _run_stages(cfg, allow_config_change)
    finally:
        save_ray_logs(cfg.run_dir, started)


def save_ray_logs(run_dir: str, since: float) -> None:
    """Ray's logs of this job beside its artifacts, whatever way the job ended (not shown on the
    console unless --verbose)."""
    import ray
    if not ray.is_initialized():
        return                          # the job stopped before Ray started: no logs to keep
    from wsss_ray.stages.session import keep_ray_logs
    try:
        where = keep_ray_logs(run_dir, since)
    except OSError as e:                # never hide the job's own outcome behind a copy failure
        log(f"Ray's logs were not copied to the run directory ({e.__class__.__name__}: {e})")
        return
    if where:
        log(f"Ray's logs in {where}")


def _run_stages(cfg: PipelineConfig, allow_config_change: bool) -> dict:
    from wsss_ray.stages.evaluate import evaluate_maps, plot_curves
    from wsss_ray.stages.extract import extract_maps
    from wsss_ray.stages.manifest import build_manifest
    from wsss_ray.stages.session import ensure_ray
    from wsss_ray.stages.train import train_classifier

    check_inputs(cfg)
    run = RunDir(cfg.run_dir)
    try:
        record_config(run, cfg, allow_config_change)
    except OSError as e:
        from wsss_ray.config_file import ConfigError
        raise ConfigError(f"run directory {cfg.run_dir!r} is not writable ({e.__class__.__name__}: {e}); "
                          f"choose another --run-dir") from None
    ensure_ray()
    check_gpus(cfg)
    timings, results = {}, {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        try:                            # the log line inside: a signal may land right after it
            take_the_signals()
            log(f"{name} ...")
            out = fn(*args, **kwargs)
        except JobInterrupted as stop:
            stop.stage = stop.stage or name
            raise
        timings[name] = time.perf_counter() - start
        log(f"{name} done in {timings[name]:.1f}s: {_short(out)}")
        return out

    timed("manifest", build_manifest, run, cfg.dataset, cfg.strict)
    train_info = timed("train_cam", train_classifier, run, "cam", cfg.model, cfg.train)
    ckpt = run.uri("checkpoints", "cam")
    dataset = cfg.dataset.kind if not cfg.dataset.class_subset else f"{cfg.dataset.kind}:{cfg.dataset.class_subset}"

    def extract_and_eval(name, kind, checkpoint, params=None, prototypes="", feature_sampling=None, baseline=""):
        out = timed(f"maps_{name}", extract_maps, run, name, kind, checkpoint, cfg.cam, params or {}, prototypes,
                    strict=cfg.strict, feature_sampling=feature_sampling, baseline=baseline)
        results[name] = timed(f"eval_{name}", evaluate_maps, run, name, dataset, cfg.eval)
        return out

    lpcam_wanted = bool({"lpcam", "lpcam_f"} & set(cfg.methods))
    # LPCAM's feature sampling rides on the CAM pass (images decoded, model loaded once)
    cam_out = extract_and_eval("cam", "cam", ckpt, feature_sampling=cfg.lpcam if lpcam_wanted else None)
    if "feature_sampling_seconds" in cam_out:
        timings["lpcam_features_in_cam_pass"] = cam_out["feature_sampling_seconds"]
    if "recam" in cfg.methods:
        recam_ckpt = run.uri("checkpoints", "recam")
        timed("train_recam", train_classifier, run, "recam", recam_model(cfg.model, cfg.recam_unfreeze),
              cfg.recam_train, init_from=ckpt)
        for name, weight in recam_weights(cfg).items():
            extract_and_eval(name, "cam", recam_ckpt, {"variant": weight})
    if lpcam_wanted:
        from wsss_ray.stages.prototypes import build_prototypes, cluster_all, sample_features
        timed("lpcam_features", sample_features, run, ckpt, cfg.lpcam, cfg.cam)
        timed("lpcam_cluster", cluster_all, run, ckpt, cfg.lpcam, cfg.cam.use_gpu)
        timed("lpcam_select", build_prototypes, run, ckpt, cfg.lpcam)
        protos = run.uri("prototypes", "lpcam.parquet")
        if "lpcam" in cfg.methods:
            extract_and_eval("lpcam", "lpcam", ckpt, {}, protos)
        if "lpcam_f" in cfg.methods:
            extract_and_eval("lpcam_f", "lpcam", ckpt, {"fg_only": True}, protos)
    if "infercam" in cfg.methods:
        for name, infercam in infercam_variants(cfg).items():
            # the split's centres come from the CAM maps above instead of a second baseline pass
            extract_and_eval(name, "infercam", ckpt, to_dict(infercam), baseline="cam" if infercam.split else "")
    if "advcam" in cfg.methods:
        extract_and_eval("advcam", "advcam", ckpt, to_dict(cfg.advcam))
        if "recam" in cfg.methods:          # the ReCAM paper's ReCAM + AdvCAM route
            extract_and_eval("recam_advcam", "advcam", run.uri("checkpoints", "recam"),
                             {**to_dict(cfg.advcam), "variant": cfg.recam_weight})
    plot_curves(list(results.values()), run.uri("eval", "summary.png"))
    table = summary_table(results)
    run.write_text(run.uri("eval", "summary.md"), table + "\n")
    summary = {"timings_s": timings, "train": train_info,
               "results": {k: v["best"] | {"num_images": v["num_images"]} for k, v in results.items()}}
    if cfg.segment:
        summary["segmentation"] = run_segmentation(cfg, run, timed)
    run.write_json(run.uri("eval", "summary.json"), summary)
    print(table, flush=True)
    if cfg.segment:
        print(segmentation_table(summary["segmentation"]), flush=True)
    log(f"artifacts in {cfg.run_dir}: eval/summary.md, eval/*.json, maps/<method>/ (Parquet), logs/ray/")
    return summary


# IRN needs a boundary head learnt from thousands of real images; on the small demo worlds
# the CRF route is the one that lifts the seeds (docs/REFINEMENT.md has both measured).
DEFAULT_REFINER = {"quick": "crf", "demo": "crf", "voc": "irn", "coco": "irn"}


def refinement_preset(dataset: DatasetConfig) -> str:
    """The refine / segmentation preset for a dataset: quick and full demo, coco, voc."""
    if dataset.kind == "demo":
        return "quick" if dataset.demo_size == "quick" else "demo"
    return "coco" if dataset.kind == "coco" else "voc"


def run_segmentation(cfg: PipelineConfig, run: RunDir, timed) -> dict:
    """Seeds -> IRN pseudo masks -> segmentation training -> evaluation, per method in
    ``cfg.segment``; writes ``eval/segmentation.md`` and returns seed / pseudo / seg mIoU."""
    from wsss_ray.models.segmentation import SEG_PRESETS
    from wsss_ray.stages.refine import REFINE_PRESETS, make_pseudo_masks
    from wsss_ray.stages.segment import evaluate_segmentation, train_segmentation

    preset = refinement_preset(cfg.dataset)
    refiner = cfg.refiner or DEFAULT_REFINER[preset]
    refine = dataclasses.replace(REFINE_PRESETS[preset], refiner=refiner, use_gpu=cfg.use_gpu_refine)
    seg = dataclasses.replace(SEG_PRESETS[preset], use_gpu=cfg.use_gpu_refine)
    rows = {}
    for method in cfg.segment:
        name = method if refiner == "irn" else f"{method}_{refiner}"      # masks/<name>, seg_<name>
        masks = timed(f"pseudo_{name}", make_pseudo_masks, run.root, method, refine, strict=cfg.strict, log=log)
        timed(f"seg_train_{name}", train_segmentation, run.root, name, seg, masks_name=name)
        result = timed(f"seg_eval_{name}", evaluate_segmentation, run.root, name, seg, strict=cfg.strict)
        rows[name] = {"seed": run.read_json(run.eval_json(method))["best"]["miou"],
                        "pseudo_mask": masks["pseudo_miou"],
                        "segmentation": result["best"]["miou"], "preset": preset,
                      "refiner": refiner}
    run.write_text(run.uri("eval", "segmentation.md"), segmentation_table(rows) + "\n")
    return rows


def segmentation_table(rows: dict) -> str:
    lines = ["| method | seed mIoU | pseudo-mask mIoU | segmentation mIoU |", "|---|---|---|---|"]
    lines += [f"| {m} | {r['seed']:.4f} | {r['pseudo_mask']:.4f} | {r['segmentation']:.4f} |" for m, r in rows.items()]
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    """LPCAM's Table 1 form: mIoU, FP, FN, precision, recall at each method's best threshold."""
    lines = ["| method | best thr | mIoU | FP | FN | precision | recall | images |",
             "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        b = res["best"]
        lines.append(f"| {name} | {b['threshold']:.2f} | {b['miou']:.4f} | {b['fp']:.4f} | {b['fn']:.4f} | "
                     f"{b['precision']:.4f} | {b['recall']:.4f} | {res['num_images']} |")
    return "\n".join(lines)


def _short(obj) -> str:
    if isinstance(obj, dict):
        keep = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in obj.items()
                if k not in ("per_class_iou", "miou", "thresholds", "precision", "recall", "class_names")}
        if "best" in obj:
            keep["best"] = {k: round(v, 4) for k, v in obj["best"].items() if isinstance(v, float)}
        return json.dumps(keep, default=str)[:400]
    return str(obj)[:400]
