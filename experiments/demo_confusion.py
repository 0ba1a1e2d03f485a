"""Diagnosis: where each method's pixels go on the demo world, at its best threshold.

mIoU says how much a method loses, not to whom. This script rebuilds the confusion matrix
of each evaluated method (the evaluation stage's own accumulation, at the threshold its
``eval/<method>.json`` picked) over all images and over the cat + dog scenes, and reports:

- what background pixels are predicted as (a class map that covers the background);
- each class's recall (GT pixels predicted as that class);
- in cat + dog scenes, cat pixels taken by dog and the reverse (confusion between the
  world's confusable pair, the false positives ReCAM's softmax loss is meant to remove).

    PYTHONPATH=. .venv/bin/python experiments/demo_confusion.py RUN_DIR cam,recam_w,recam_wp,recam_wprod [NAME]

Writes ``experiments/results/<NAME>.json`` (default ``demo_confusion``).
"""
from __future__ import annotations

import json
import sys

import numpy as np

from benchmarks._common import write_results
from wsss_ray.data.manifest import read_manifest
from wsss_ray.rundir import RunDir
from wsss_ray.stages.evaluate import accumulate_confusions
from wsss_ray.stages.session import ensure_ray


def row_fractions(conf: np.ndarray) -> np.ndarray:
    """Rows = GT classes; each row divided by its GT pixel count."""
    return conf / np.maximum(conf.sum(1, keepdims=True), 1)


def describe(conf: np.ndarray, names: list[str]) -> dict:
    fractions = row_fractions(conf.astype(np.float64))
    iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
    return {"iou": dict(zip(names, np.round(iou, 4).tolist())),
            "recall": dict(zip(names, np.round(np.diag(fractions), 4).tolist())),
            "background_predicted_as": dict(zip(names, np.round(fractions[0], 4).tolist()))}


def method_confusions(run: RunDir, method: str, pair_ids: list[int], names: list[str]) -> dict:
    with open(run.uri("eval", f"{method}.json")) as f:
        best = json.load(f)["best"]
    threshold = best["threshold"]
    everything, _, _ = accumulate_confusions(run, method, [threshold])
    pairs, count, _ = accumulate_confusions(run, method, [threshold], image_ids=pair_ids)
    cat, dog = names.index("cat"), names.index("dog")
    pair_rows = row_fractions(pairs[0].astype(np.float64))
    return {"threshold": threshold, "miou": round(best["miou"], 4), "all_images": describe(everything[0], names),
            "cat_dog_scenes": {"images": count, "cat_taken_by_dog": round(pair_rows[cat, dog], 4),
                               "dog_taken_by_cat": round(pair_rows[dog, cat], 4),
                               "cat_to_background": round(pair_rows[cat, 0], 4),
                               "dog_to_background": round(pair_rows[dog, 0], 4)}}


def main(run_dir: str, methods: str, name: str = "demo_confusion") -> None:
    run = RunDir(run_dir)
    ensure_ray()
    manifest, classes = read_manifest(run.manifest())
    names = ["background", *classes.names]
    cat, dog = classes.names.index("cat"), classes.names.index("dog")
    pair_ids = [r["image_id"] for r in manifest.to_pylist() if {cat, dog} <= set(r["labels"])]
    results = {m: method_confusions(run, m, pair_ids, names) for m in methods.split(",")}
    for method, r in results.items():
        print(method, json.dumps(r))
    write_results(name, {"run_dir": run_dir, "methods": results})


if __name__ == "__main__":
    main(*sys.argv[1:4])
