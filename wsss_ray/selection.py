"""A fair threshold protocol: choose on one subset of the labelled images, report on another.

The CAM/ReCAM/LPCAM papers pick the background threshold (and their hyperparameters) by
the mIoU on the ground truth of the very images they then report mIoU on. That number
is an oracle: the LPCAM authors call the protocol ill-posed. Here the evaluable images
are split once, seeded and stratified by label set, into a *selection* subset (where the
threshold, and in sweeps the configuration, is chosen) and a disjoint *report* subset
(where mIoU is measured at the chosen threshold). Both protocols are reported side by
side so the optimism of the papers' number is visible.

Pure numpy (no Ray): the stages call these functions on confusion matrices; sweeps sum them
image by image (``FairAccumulator``) and pick a configuration per protocol (``sweep_summary``).
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from wsss_ray.metrics import class_counts, scores_from_counts


def _label_key(labels: Iterable[int]) -> tuple:
    return tuple(sorted(int(c) for c in labels))


def _take_count(n: int, fraction: float, rng: np.random.Generator) -> int:
    """How many of a group of n go to the selection subset: stochastic rounding so many
    small groups do not all round the same way, kept in [1, n-1] so both sides get one."""
    want = int(np.floor(n * fraction + rng.random()))
    return min(max(want, 1), n - 1)


def split_selection_report(image_ids: Sequence[int], label_sets: Sequence[Iterable[int]],
                           selection_fraction: float = 0.5, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split images into (selection, report): disjoint, covering every input id.

    Images sharing a label set are split within their group (stratified); label sets
    seen only once are pooled and split together, since a single image cannot be
    stratified. Deterministic for a given seed and input set (order does not matter).
    """
    if len(image_ids) != len(label_sets):
        raise ValueError("image_ids and label_sets differ in length")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique")
    if len(image_ids) < 2:
        raise ValueError("need at least two images to split into selection and report subsets")
    if not 0.0 < selection_fraction < 1.0:
        raise ValueError("selection_fraction must be in (0, 1)")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for image_id, labels in zip(image_ids, label_sets):
        groups[_label_key(labels)].append(int(image_id))
    singles = sorted(i for key, ids in groups.items() if len(ids) == 1 for i in ids)
    strata = [sorted(ids) for key, ids in sorted(groups.items()) if len(ids) > 1]
    if len(singles) == 1:                     # a lone leftover joins the largest stratum
        biggest = max(range(len(strata)), key=lambda j: len(strata[j]))
        strata[biggest] = sorted(strata[biggest] + singles)
    elif singles:
        strata.append(singles)
    rng = np.random.default_rng(seed)
    selection, report = [], []
    for ids in strata:
        order = rng.permutation(len(ids))
        n_sel = _take_count(len(ids), selection_fraction, rng)
        selection += [ids[j] for j in order[:n_sel]]
        report += [ids[j] for j in order[n_sel:]]
    return sorted(selection), sorted(report)


def best_threshold(thresholds: Sequence[float], counts: np.ndarray) -> dict:
    """The threshold with the highest mIoU for (T, K, 3) class counts (``class_counts``), with its scores."""
    scores = [scores_from_counts(c) for c in counts]
    mious = np.asarray([s["miou"] for s in scores], np.float64)
    if np.all(np.isnan(mious)):
        return {"threshold": float(thresholds[0]), "index": 0, "miou": float("nan"), "curve": mious.tolist()}
    i = int(np.nanargmax(mious))
    best = {k: v for k, v in scores[i].items() if k != "per_class_iou"}
    return dict(best, threshold=float(thresholds[i]), index=i, curve=mious.tolist())


def scores_at(counts: np.ndarray, index: int) -> dict:
    return {k: v for k, v in scores_from_counts(counts[index]).items() if k != "per_class_iou"}


def fair_protocol(thresholds: Sequence[float], selection_conf: np.ndarray, report_conf: np.ndarray,
                  num_selection: int = 0, num_report: int = 0) -> dict:
    """Both protocols from per-subset class counts (T, K, 3) (``class_counts`` of the confusions).

    papers_protocol: best threshold chosen and scored on all images (selection + report).
    selection: the threshold chosen on the selection subset (and its mIoU there).
    report: mIoU on the report subset at the selection's threshold; ``oracle_miou`` is what
    the report subset would claim if it chose its own threshold (the papers' optimism).
    """
    chosen = best_threshold(thresholds, selection_conf)
    papers = best_threshold(thresholds, selection_conf + report_conf)
    oracle = best_threshold(thresholds, report_conf)
    report = dict(scores_at(report_conf, chosen["index"]), threshold=chosen["threshold"],
                  oracle_miou=oracle["miou"], oracle_threshold=oracle["threshold"], num_images=num_report)
    return {"thresholds": [float(t) for t in thresholds],
            "selection": dict(chosen, num_images=num_selection),
            "report": report,
            "papers_protocol": dict(papers, num_images=num_selection + num_report),
            "optimism": papers["miou"] - report["miou"]}


def choose_config(rows: Sequence[dict], key: str) -> dict | None:
    """The row with the highest ``key`` among rows that have it (NaN and missing skipped)."""
    scored = [r for r in rows if r.get(key) is not None and not np.isnan(float(r[key]))]
    return max(scored, key=lambda r: float(r[key])) if scored else None


class FairAccumulator:
    """Class counts of the selection and report subsets, summed image by image."""

    def __init__(self, thresholds, num_classes: int, selection: set[int]):
        self.thresholds, self.selection = list(thresholds), selection
        k = num_classes + 1
        self.conf = {"selection": np.zeros((len(thresholds), k, 3), np.int64),
                     "report": np.zeros((len(thresholds), k, 3), np.int64)}
        self.count = {"selection": 0, "report": 0}

    def add(self, image_id: int, confusion: np.ndarray) -> None:
        part = "selection" if image_id in self.selection else "report"
        self.conf[part] += class_counts(confusion)
        self.count[part] += 1

    def summary(self) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # an empty subset early on: NaN
            return fair_protocol(self.thresholds, self.conf["selection"], self.conf["report"],
                                 self.count["selection"], self.count["report"])

    def metrics(self) -> dict:
        s = self.summary()
        return {"miou": s["papers_protocol"]["miou"], "best_threshold": s["papers_protocol"]["threshold"],
                "sel_miou": s["selection"]["miou"], "sel_threshold": s["selection"]["threshold"],
                "report_miou": s["report"]["miou"], "images": sum(self.count.values()),
                "miou_at": {f"{t:.2f}": float(v) for t, v in zip(self.thresholds, s["papers_protocol"]["curve"])}}


def sweep_summary(rows: list[dict]) -> dict:
    """The config each protocol would pick: the papers' (best mIoU over all images) and
    the fair one (best on the selection subset, reported on the report subset)."""
    complete = [r for r in rows if r.get("complete") and not r.get("error")]
    papers, fair = choose_config(complete, "miou"), choose_config(complete, "sel_miou")
    return {"trials": len(rows), "complete": len(complete),
            "papers_protocol": papers and {k: v for k, v in papers.items() if k != "trial_dir"},
            "fair": fair and {k: v for k, v in fair.items() if k != "trial_dir"},
            "fair_report_miou": fair and fair["report_miou"]}
