"""Diagnosis: how calibrated are the class scores that LPCAM's prototype selection reads?

Selection keeps a context centre only when ``mu_b_low < p < mu_b_high`` with
``p = softmax over classes(centre . W)``. If the classifier's logits on centres are huge,
p is ~0 or ~1 for almost every centre and context selection becomes a coin toss. This
script reads a finished run's ``prototypes/centres.parquet`` and its CAM head and prints,
per class and kind, the centre scores, how many are saturated (p > 0.999 or p < 0.001),
and the gap between the top two logits of each centre.

    PYTHONPATH=. .venv/bin/python experiments/prototype_scores.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from benchmarks._common import command_line, write_results
from wsss_ray.cams.lpcam import CONTEXT, FG
from wsss_ray.cams.prototypes import class_scores
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.store import read_table_uri


def top2_gap(vectors: np.ndarray, head: np.ndarray) -> np.ndarray:
    logits = np.sort(vectors.astype(np.float64) @ head.astype(np.float64).T, axis=1)
    return logits[:, -1] - logits[:, -2]


def summarise_run(run_dir: str) -> dict:
    run = RunDir(run_dir)
    _, classes = read_manifest(run.manifest())
    model, _, _ = load_classifier(run.uri("checkpoints", "cam"))
    head = model.head.weight.detach().flatten(1).numpy()
    rows = read_table_uri(run.uri("prototypes", "centres.parquet")).to_pylist()
    per_class, all_scores, all_gaps = [], [], []
    for c in range(classes.num_classes):
        entry = {"class": classes.names[c]}
        for kind in (FG, CONTEXT):
            vectors = np.asarray([r["vector"] for r in rows if r["class_id"] == c and r["kind"] == kind], np.float32)
            if not len(vectors):
                continue
            p = class_scores(vectors, head)[:, c]
            gaps = top2_gap(vectors, head)
            all_scores.append(p)
            all_gaps.append(gaps)
            entry[kind] = {"scores": [float(f"{s:.3g}") for s in sorted(p, reverse=True)],
                           "saturated": int(((p > 0.999) | (p < 0.001)).sum()), "count": len(p),
                           "median_top2_logit_gap": round(float(np.median(gaps)), 2)}
        per_class.append(entry)
    scores, gaps = np.concatenate(all_scores), np.concatenate(all_gaps)
    return {"run_dir": run_dir, "centres": int(len(scores)),
            "saturated_fraction": round(float(((scores > 0.999) | (scores < 0.001)).mean()), 3),
            "median_top2_logit_gap": round(float(np.median(gaps)), 2), "per_class": per_class}


def main(run_dirs: list[str]) -> None:
    torch.set_grad_enabled(False)
    results = [summarise_run(d) for d in run_dirs]
    for r in results:
        print(f"\n{r['run_dir']}: {r['centres']} centres, saturated {r['saturated_fraction']:.1%}, "
              f"median top-2 logit gap {r['median_top2_logit_gap']}")
        for entry in r["per_class"]:
            parts = [f"{k}: {entry[k]['saturated']}/{entry[k]['count']} saturated, p = {entry[k]['scores']}"
                     for k in (FG, CONTEXT) if k in entry]
            print(f"  {entry['class']:>12}  " + " | ".join(parts))
    write_results("prototype_scores", {"command": command_line(), "runs": results})
    print(json.dumps([{k: r[k] for k in ("run_dir", "centres", "saturated_fraction", "median_top2_logit_gap")}
                      for r in results]))


if __name__ == "__main__":
    main(sys.argv[1:])
