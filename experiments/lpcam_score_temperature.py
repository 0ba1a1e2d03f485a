"""Diagnosis, not a method change: does LPCAM fail on a run because its classifier's
centre scores are saturated (see prototype_scores.py)?

Re-scores a finished run's stored centres with ``softmax(centre . W / T)`` for each given
temperature T (T = 1 is LPCAM as published), selects prototypes with the run's own
mu_f / mu_b, extracts LPCAM maps and evaluates them. Everything is written under
``<run>/diag_T<T>`` names (prototypes/lpcam_T*.parquet, maps/lpcam_T*, eval/lpcam_T*.json);
the run's own artifacts are not touched.

    PYTHONPATH=. .venv/bin/python experiments/lpcam_score_temperature.py RUN_DIR 1 4 16
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa

from benchmarks._common import command_line, write_results
from wsss_ray.cams.prototypes import class_scores
from wsss_ray.data.manifest import read_manifest
from wsss_ray.models.checkpoint import load_classifier
from wsss_ray.rundir import RunDir
from wsss_ray.stages.evaluate import evaluate_maps
from wsss_ray.stages.extract import extract_maps
from wsss_ray.stages.prototypes import select_prototypes
from wsss_ray.stages.session import ensure_ray
from wsss_ray.rundir import run_config
from wsss_ray.store import read_table_uri, write_table_uri


def rescored(centres: pa.Table, head: np.ndarray, temperature: float) -> pa.Table:
    """The stage's own ``class_scores`` with W / T: softmax(centre . W / T)."""
    vectors = np.asarray(centres.column("vector").to_pylist(), np.float32)
    p = class_scores(vectors, head / temperature)
    scores = p[np.arange(len(p)), np.asarray(centres.column("class_id").to_pylist())]
    return centres.set_column(centres.schema.get_field_index("score"), "score", pa.array(scores))


def main(run_dir: str, temperatures: list[float]) -> None:
    run = RunDir(run_dir)
    saved = run_config(run)
    _, classes = read_manifest(run.manifest())
    ckpt = run.uri("checkpoints", "cam")
    model, _, _ = load_classifier(ckpt)
    head = model.head.weight.detach().flatten(1).numpy()
    centres = read_table_uri(run.uri("prototypes", "centres.parquet"))
    ensure_ray()
    rows = []
    for t in temperatures:
        name = f"lpcam_T{t:g}"
        table, info = select_prototypes(rescored(centres, head, t), classes.num_classes, saved["lpcam"])
        write_table_uri(table, run.uri("prototypes", f"{name}.parquet"))
        extract_maps(run, name, "lpcam", ckpt, saved["cam"], {}, run.uri("prototypes", f"{name}.parquet"))
        best = evaluate_maps(run, name, saved["dataset"], saved["eval"])["best"]
        rows.append({"temperature": t, "prototypes": table.num_rows, **info, "threshold": best["threshold"],
                     "miou": round(best["miou"], 4), "per_class_iou": [round(x, 3) for x in best["per_class_iou"]]})
        print(json.dumps(rows[-1]), flush=True)
    write_results("lpcam_score_temperature", {"command": command_line(), "run_dir": run_dir, "rows": rows})


if __name__ == "__main__":
    main(sys.argv[1], [float(x) for x in sys.argv[2:]])
