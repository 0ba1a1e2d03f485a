"""Manifest stage: any dataset -> ``manifest/manifest.parquet`` + ``classes.json`` + errors.

Every image's header is read here (``data/file_checks.py``): an unreadable or mis-sized image
is an error row and leaves the manifest, so no later stage meets it; ``strict`` stops at the
first one, before any training."""
from __future__ import annotations


from wsss_ray.config import DatasetConfig
from wsss_ray.data.classmap import ErrorCollector
from wsss_ray.data.errors import errors_table
from wsss_ray.data.file_checks import check_image_files
from wsss_ray.data.manifest import ClassSpace, read_manifest, write_manifest
from wsss_ray.rundir import RunDir
from wsss_ray.store import write_table_uri


def build_rows(cfg: DatasetConfig, run: RunDir, strict: bool = False):
    """Dispatch to the dataset's builder: (rows, classes, errors)."""
    if cfg.kind == "demo":
        from wsss_ray.data.demo import build_demo_manifest
        return build_demo_manifest(run.uri("demo_world"), size=cfg.demo_size)
    if cfg.kind == "coco":
        from wsss_ray.data.coco import build_coco_manifest
        return _concat_splits([build_coco_manifest(cfg.root, split, run.uri("gt_masks", cfg.class_subset or "all"),
                                                   class_subset=cfg.class_subset, limit=cfg.limit, strict=strict)
                               for split in cfg.split.split("+")])
    if cfg.kind == "voc":
        from wsss_ray.data.voc import build_voc_manifest
        return build_voc_manifest(cfg.root, cfg.split, strict=strict, limit=cfg.limit)
    if cfg.kind == "folder":
        from wsss_ray.data.folder import build_folder_manifest
        return build_folder_manifest(cfg.root, cfg.tags_file, class_names=list(cfg.classes) or None,
                                     masks_dir=cfg.masks_dir, strict=strict)
    raise ValueError(f"unknown dataset kind {cfg.kind!r}: demo, coco, voc or folder")


def _concat_splits(parts):
    """Several splits of one dataset (e.g. COCO "train+val") as one manifest."""
    rows = [r for p in parts for r in p[0]]
    ids = [r.image_id for r in rows]
    if len(ids) != len(set(ids)):
        raise ValueError("image ids repeat across the requested splits")
    return rows, parts[0][1], [e for p in parts for e in p[2]]


def build_manifest(run: RunDir, cfg: DatasetConfig, strict: bool = False) -> dict:
    """Write the manifest once; a rerun reads the existing one."""
    if run.exists(run.uri("manifest", "manifest.parquet")):
        table, classes = read_manifest(run.manifest())
        return {"images": table.num_rows, "classes": classes.num_classes, "errors": None, "skipped": True}
    rows, classes, errors = build_rows(cfg, run, strict)
    check_pinned_classes(cfg, classes)
    if cfg.kind != "folder":            # the folder builder took each size from the image's header already
        collector = ErrorCollector(strict)
        rows = check_image_files(rows, collector)
        errors = errors + collector.records
    if cfg.limit and cfg.kind in ("demo", "folder"):
        rows = sorted(rows, key=lambda r: r.image_id)[:cfg.limit]
    write_table_uri(errors_table(errors), run.uri("errors", "manifest", "part-00000.parquet"))
    if not rows:
        raise no_usable_images(cfg, errors)
    write_manifest(rows, classes, run.manifest())
    counts = class_counts(rows, classes)
    run.write_json(run.uri("manifest", "class_counts.json"), counts)
    if cfg.kind == "folder" and not cfg.classes:
        print(inferred_classes_note(counts), flush=True)
    return {"images": len(rows), "classes": classes.num_classes, "errors": len(errors), "skipped": False}


def check_pinned_classes(cfg: DatasetConfig, classes: ClassSpace) -> None:
    """A pinned class list that the dataset's own list differs from stops the job: class ids
    would not mean what the user's maps, masks or checkpoints take them to mean."""
    from wsss_ray.config_file import ConfigError
    if cfg.classes and cfg.kind != "folder" and tuple(cfg.classes) != tuple(classes.names):
        missing = [n for n in cfg.classes if n not in classes.names]
        extra = [n for n in classes.names if n not in cfg.classes]
        detail = (f"not in the dataset: {missing}; " if missing else "") + (f"only in the dataset: {extra}" if extra
                                                                               else "the same names in another order")
        raise ConfigError(f"dataset.classes differs from the {cfg.kind} dataset's class list ({detail.rstrip('; ')})")


def class_counts(rows, classes: ClassSpace) -> dict[str, int]:
    """Images per class, in class-id order (``manifest/class_counts.json``)."""
    counts = [0] * classes.num_classes
    for row in rows:
        for c in row.labels:
            counts[c] += 1
    return dict(zip(classes.names, counts))


def inferred_classes_note(counts: dict[str, int]) -> str:
    """The console line for a class list read from the tags: the list, how to pin it, and the
    tags seen on one image only (a typo becomes a class and shifts every id after it)."""
    once = [n for n, k in counts.items() if k == 1]
    line = (f"[wsss_ray] {len(counts)} classes inferred from the tags (manifest/classes.json): {', '.join(counts)}; "
            f"pin them with -o dataset.classes={','.join(counts)}")
    return line + (f". Seen on one image only, likely typos: {', '.join(once)}" if once else "")


def no_usable_images(cfg: DatasetConfig, errors) -> Exception:
    """A dataset that yields no image stops the job here, saying why, not in training."""
    from collections import Counter

    from wsss_ray.config_file import ConfigError
    what = f"{cfg.kind} dataset {cfg.root or 'demo'}" + (f" split {cfg.split!r}" if cfg.kind in ("coco", "voc") else "")
    what += f" with class_subset {cfg.class_subset!r}" if cfg.class_subset else ""
    common = Counter(e.reason.split(":")[0].split(" (")[0] for e in errors).most_common(2)
    why = "; ".join(f"{n} x {reason}" for reason, n in common)
    return ConfigError(f"the {what} has no usable image ({len(errors)} error rows in errors/manifest"
                       + (f", most often: {why}" if why else "") + "): check the root, split, class subset and tags")
