"""The fair protocol on stored maps: the threshold chosen on a selection subset, mIoU reported
on the disjoint report subset, next to the papers' protocol (``wsss_ray.selection``)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from wsss_ray.config import EvalConfig
from wsss_ray.data.manifest import read_manifest
from wsss_ray.metrics import class_counts
from wsss_ray.rundir import RunDir, evaluable_images, run_config
from wsss_ray.selection import FairAccumulator, fair_protocol, split_selection_report
from wsss_ray.stages.evaluate import image_confusions
from wsss_ray.store import list_shards, open_fs


def _subsets_of_batch(batch: dict, masks: dict, num_classes: int, thresholds, selection: set, report: set) -> dict:
    """One map batch -> confusions of its selection images and of its report images."""
    from wsss_ray.stages.evaluate import confusions_of_batch
    sel = confusions_of_batch(batch, masks, num_classes, thresholds, selection)
    rep = confusions_of_batch(batch, masks, num_classes, thresholds, report)
    return {"selection": sel["confusion"], "report": rep["confusion"],
            "n_selection": sel["count"], "n_report": rep["count"]}


def subset_confusions(run: RunDir, method: str, thresholds, selection: set[int]) -> tuple:
    """Selection and report confusions of ``maps/<method>`` in one Ray Data pass, with the
    evaluation stage's per-image maths."""
    import ray
    ids, _, masks = evaluable_images(run)
    _, classes = read_manifest(run.manifest())
    fs, path = open_fs(run.uri("maps", method))
    shards = list_shards(fs, path)
    if not shards:
        raise FileNotFoundError(f"no map shards under {run.uri('maps', method)}: run the extraction first")
    t, k = len(thresholds), classes.num_classes + 1
    ds = ray.data.read_parquet(shards, filesystem=fs, override_num_blocks=min(len(shards), 64))
    ds = ds.map_batches(_subsets_of_batch, batch_size=16, batch_format="numpy", num_cpus=0.5,
                        fn_kwargs={"masks": masks, "num_classes": classes.num_classes, "thresholds": list(thresholds),
                                   "selection": set(selection), "report": set(ids) - set(selection)})
    out = {"selection": np.zeros((t, k, k), np.int64), "report": np.zeros((t, k, k), np.int64),
           "n_selection": 0, "n_report": 0}
    for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key in ("selection", "report"):
            out[key] += part[key].sum(0).reshape(t, k, k)
            out[f"n_{key}"] += int(part[f"n_{key}"].sum())
    return out["selection"], out["report"], out["n_selection"], out["n_report"]


def local_fair_confusions(run: RunDir, method: str, thresholds, selection: set[int]) -> FairAccumulator:
    """Selection / report confusions of ``maps/<method>`` in this process (the evaluation
    stage's per-image maths): a trial is already one parallel unit, and a Ray Data pass
    per subset would cost more in start-up than the arithmetic on a small run."""
    _, _, masks = evaluable_images(run)
    _, classes = read_manifest(run.manifest())
    acc = FairAccumulator(thresholds, classes.num_classes, selection)
    fs, path = open_fs(run.uri("maps", method))
    for shard in list_shards(fs, path):
        for row in pq.read_table(shard, filesystem=fs).to_pylist():
            if row["image_id"] in masks:
                acc.add(row["image_id"], image_confusions(row, masks[row["image_id"]], classes.num_classes, thresholds))
    return acc


def evaluate_fair(run: RunDir, method: str, cfg: EvalConfig | None = None, selection_fraction: float = 0.5,
                  seed: int = 0) -> dict:
    """``eval/<method>_fair.json``: the threshold chosen on a selection subset and mIoU
    reported on the disjoint report subset, next to the papers' protocol (all images)."""
    thresholds = list((cfg or run_config(run)["eval"]).thresholds)
    ids, labels, _ = evaluable_images(run)
    selection, _ = split_selection_report(ids, labels, selection_fraction, seed)
    sel, rep, n_sel, n_rep = subset_confusions(run, method, thresholds, set(selection))
    result = dict(fair_protocol(thresholds, class_counts(sel), class_counts(rep), n_sel, n_rep), method=method, seed=seed,
                  selection_fraction=selection_fraction)     # the split is reproducible from seed + fraction
    run.write_json(run.uri("eval", f"{method}_fair.json"), result)
    return result
