"""Manifest stage: any dataset -> ``manifest/manifest.parquet`` + ``classes.json`` + errors.

Every image's header is read here (``data/file_checks.py``): an unreadable or mis-sized image
is an error row and leaves the manifest, so no later stage meets it; ``strict`` stops at the
first one, before any training."""
from __future__ import annotations


from wsss_ray.config import DatasetConfig
from wsss_ray.data.classmap import ErrorCollector
from wsss_ray.data.errors import errors_table
from wsss_ray.data.file_checks import check_image_files
from wsss_ray.data.manifest import read_manifest, write_manifest
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
        return build_folder_manifest(cfg.root, cfg.tags_file, masks_dir=cfg.masks_dir, strict=strict)
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
    if cfg.kind != "folder":            # the folder builder took each size from the image's header already
        collector = ErrorCollector(strict)
        rows = check_image_files(rows, collector)
        errors = errors + collector.records
    if cfg.limit and cfg.kind in ("demo", "folder"):
        rows = sorted(rows, key=lambda r: r.image_id)[:cfg.limit]
    write_table_uri(errors_table(errors), run.uri("errors", "manifest", "part-00000.parquet"))
    write_manifest(rows, classes, run.manifest())
    return {"images": len(rows), "classes": classes.num_classes, "errors": len(errors), "skipped": False}
