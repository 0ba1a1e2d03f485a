"""How many COCO GT pixels change between an older mask builder and the current one.

The GT masks of a COCO tree are built twice with ``build_coco_manifest``: once with
``wsss_ray/data/coco.py`` as it stands, once with that file as it was at an older commit
(read with ``git show`` into a temporary module; the rest of the package is today's).
Reported: changed pixels per image and in total, their share of all pixels, what they
changed between (background / object / ignore), and the same comparison per annotation
(each instance mask on its own, by segmentation kind: polygon, RLE, compressed RLE, with
the sum of the JSON's own 'area' field beside the two pixel counts).

    PYTHONPATH=. .venv/bin/python benchmarks/coco_masks_diff.py --coco-root ../shared/data/coco_tiny

With ``--rescore RUN_DIR`` (a finished COCO run) the run's own maps are also scored
against both sets of GT masks, so a change in its table can be put down to the masks:

    PYTHONPATH=. .venv/bin/python benchmarks/coco_masks_diff.py --rescore runs/coco_tiny_ref

The default old commit (7511450) is the last one that filled polygons with PIL and decoded
RLE by hand; the current builder uses pycocotools.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import COCO_TINY, write_results  # noqa: E402

from wsss_ray.data import coco as new_coco  # noqa: E402
from wsss_ray.data.images import load_mask  # noqa: E402
from wsss_ray.data.manifest import IGNORE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_old_module(rev: str, workdir: Path):
    """``wsss_ray/data/coco.py`` at ``rev`` as a module of its own."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:wsss_ray/data/coco.py"],
                            check=True, capture_output=True, text=True).stdout
    path = workdir / f"coco_at_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"coco_at_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kind(seg) -> str:
    if isinstance(seg, list):
        return "polygon"
    return "rle_compressed" if isinstance(seg.get("counts"), (str, bytes)) else "rle"


def _category(v: np.ndarray) -> np.ndarray:
    return np.where(v == 0, "background", np.where(v == IGNORE, "ignore", "object"))


def compare_split(old, root: str, split: str, subset: str, workdir: Path) -> dict:
    built = {}
    for name, module in (("old", old), ("new", new_coco)):
        rows, _, _ = module.build_coco_manifest(root, split, str(workdir / f"{name}_{split}_{subset or 'all'}"),
                                                class_subset=subset)
        built[name] = {r.image_id: r for r in rows}
    assert built["old"].keys() == built["new"].keys(), "the two builders kept different images"
    images, transitions = [], Counter()
    for iid in sorted(built["new"]):
        a, b = load_mask(built["old"][iid].mask_uri), load_mask(built["new"][iid].mask_uri)
        changed = a != b
        pairs = Counter(zip(_category(a[changed]).tolist(), _category(b[changed]).tolist()))
        transitions.update(pairs)
        images.append({"image_id": iid, "pixels": int(a.size), "changed": int(changed.sum()),
                       "scored_changed": int((changed & (a != IGNORE) & (b != IGNORE)).sum())})
    return {"images": images, "transitions": transitions}


def compare_instances(old, root: str, split: str) -> dict:
    """Each annotation's own mask, old vs new, summed by segmentation kind."""
    folder = new_coco._resolve_split(new_coco.absolute_root(root), split)[1]
    doc = json.loads((Path(root) / "annotations" / f"instances_{folder}.json").read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in doc["images"]}
    out: dict[str, dict] = {}
    for ann in doc["annotations"]:
        h, w = sizes[ann["image_id"]]
        a = old.segmentation_mask(ann["segmentation"], h, w)
        b = new_coco.segmentation_mask(ann["segmentation"], h, w)
        k = out.setdefault(_kind(ann["segmentation"]), {"annotations": 0, "changed_annotations": 0,
                                                        "old_pixels": 0, "new_pixels": 0, "changed": 0,
                                                        "old_only": 0, "new_only": 0, "json_area": 0.0})
        diff = int((a != b).sum())
        k["annotations"] += 1
        k["json_area"] += float(ann.get("area", 0.0))
        k["changed_annotations"] += int(diff > 0)
        k["old_pixels"] += int(a.sum())
        k["new_pixels"] += int(b.sum())
        k["changed"] += diff
        k["old_only"] += int((a & ~b).sum())
        k["new_only"] += int((b & ~a).sum())
    return out


def rescore(old, run_dir: str, workdir: Path) -> dict:
    """The run's maps of every evaluated method, scored against the run's GT masks (the
    current builder) and against masks of the same images from the old builder."""
    import pyarrow.parquet as pq

    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.evaluate import image_confusions, summarise
    from wsss_ray.store import list_shards, open_fs

    run = RunDir(run_dir)
    cfg = run.read_json(run.uri("config.json"))
    data, thresholds = cfg["dataset"], cfg["eval"]["thresholds"]
    if data["kind"] != "coco" or cfg["eval"].get("max_side"):
        raise SystemExit("--rescore needs a COCO run evaluated at native resolution")
    manifest, classes = read_manifest(run.manifest())
    new_masks = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("mask_uri").to_pylist()))
    old_masks = {}
    for split in data["split"].split("+"):
        rows, _, _ = old.build_coco_manifest(data["root"], split, str(workdir / f"rescore_{split}"),
                                             class_subset=data["class_subset"])
        old_masks.update({r.image_id: r.mask_uri for r in rows})
    assert old_masks.keys() == new_masks.keys(), "the old builder kept different images"
    methods = sorted(n[:-5] for n in os.listdir(run.uri("eval"))   # eval/<method>.json beside maps/<method>
                     if n.endswith(".json") and os.path.isdir(run.maps(n[:-5])))
    k = classes.num_classes + 1
    out = {}
    for method in methods:
        totals = {"new": np.zeros((len(thresholds), k, k), np.int64), "old": np.zeros((len(thresholds), k, k), np.int64)}
        count = 0
        fs, path = open_fs(run.maps(method))
        for shard in list_shards(fs, path):
            for row in pq.read_table(shard, filesystem=fs).to_pylist():
                count += 1
                for name, masks in (("new", new_masks), ("old", old_masks)):
                    totals[name] += image_confusions(row, masks[row["image_id"]], classes.num_classes, thresholds)
        out[method] = {name: summarise(method, "", thresholds, c, count, list(classes.names))["best"]
                       for name, c in totals.items()}
        out[method]["run_eval"] = run.read_json(run.eval_json(method))["best"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco-root", default=COCO_TINY)
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--class-subsets", nargs="+", default=["voc20", "all"],
                   help="'all' = the 80 COCO classes; 'voc20' = the reference protocol's masks")
    p.add_argument("--old-rev", default="7511450")
    p.add_argument("--rescore", default="", metavar="RUN_DIR",
                   help="also score this COCO run's maps against the old and the new masks")
    p.add_argument("--out", default="coco_masks_diff", help="results/<out>.json")
    args = p.parse_args()
    result = {"coco_root": Path(args.coco_root).name, "old_rev": args.old_rev, "subsets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        old = load_old_module(args.old_rev, workdir)
        for subset_arg in args.class_subsets:
            subset = "" if subset_arg == "all" else subset_arg
            images, transitions = [], Counter()
            for split in args.splits:
                part = compare_split(old, args.coco_root, split, subset, workdir)
                images += [dict(r, split=split) for r in part["images"]]
                transitions.update(part["transitions"])
            total = sum(r["pixels"] for r in images)
            changed = sum(r["changed"] for r in images)
            result["subsets"][subset_arg] = {
                "images": len(images), "images_changed": sum(r["changed"] > 0 for r in images),
                "pixels": total, "changed": changed, "changed_share": changed / total,
                "scored_changed": sum(r["scored_changed"] for r in images),
                "max_image_changed": max(r["changed"] for r in images),
                "transitions": {f"{a} -> {b}": n for (a, b), n in transitions.most_common()},
                "per_image": images,
            }
            s = result["subsets"][subset_arg]
            print(f"{subset_arg}: {s['changed']} of {s['pixels']} GT pixels changed "
                  f"({100 * s['changed_share']:.3f}%) in {s['images_changed']} of {s['images']} images; "
                  f"largest in one image {s['max_image_changed']}; "
                  f"not ignore in both {s['scored_changed']}")
            for key, n in s["transitions"].items():
                print(f"  {key:<26} {n}")
        instances = {}
        for split in args.splits:
            for kind, v in compare_instances(old, args.coco_root, split).items():
                acc = instances.setdefault(kind, Counter())
                acc.update(v)
        result["instances"] = {k: dict(v) for k, v in instances.items()}
        for kind, v in result["instances"].items():
            print(f"instances ({kind}): {v['changed_annotations']} of {v['annotations']} differ, "
                  f"{v['changed']} pixels (only old {v['old_only']}, only new {v['new_only']}; "
                  f"old area {v['old_pixels']}, new area {v['new_pixels']}, the JSON's 'area' {v['json_area']:.0f})")
        if args.rescore:
            result["rescore"] = rescore(old, args.rescore, workdir)
            print("| method | GT masks | best thr | mIoU | FP | FN | precision | recall |")
            print("|---|---|---|---|---|---|---|---|")
            for method, by_gt in result["rescore"].items():
                for name in ("old", "new", "run_eval"):
                    b = by_gt[name]
                    print(f"| {method} | {name} | {b['threshold']:.2f} | {b['miou']:.4f} | {b['fp']:.4f} | "
                          f"{b['fn']:.4f} | {b['precision']:.4f} | {b['recall']:.4f} |")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
