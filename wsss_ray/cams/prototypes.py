"""LPCAM prototype selection (METHODS.md section 2): score every cluster centre by the classifier
head, ``p = softmax(centre . W)``, and keep, per class n, the foreground centres with
``p[n] > mu_f`` (``select_foreground`` for a class none passes) and the context centres with
``mu_b_low < p[n] < mu_b_high``.

Works on centre rows (dicts with class_id, kind, cluster, size, vector) as ``cams.clustering``
makes them; the prototype stage stores them as Parquet tables.
"""
from __future__ import annotations

import numpy as np
import torch

from wsss_ray.cams.clustering import CONTEXT, FG


def class_scores(centres: np.ndarray, head_weight: np.ndarray) -> np.ndarray:
    """p = softmax over classes of (centre . W): (K, C)."""
    logits = torch.as_tensor(centres, dtype=torch.float64) @ torch.as_tensor(head_weight, dtype=torch.float64).T
    return torch.softmax(logits, dim=1).numpy()


def score_centres(rows: list[dict], head: np.ndarray) -> list[dict]:
    """Adds ``score`` = p[own class] to every centre row (in place; returns the rows)."""
    if rows:
        scores = class_scores(np.asarray([r["vector"] for r in rows], np.float32), head)
        for r, p in zip(rows, scores):
            r["score"] = float(p[r["class_id"]])
    return rows


FALLBACKS = ("near_best", "best_one")


def select_foreground(scores_n: np.ndarray, mu_f: float, fallback: str = "near_best") -> tuple[np.ndarray, bool]:
    """Indices of centres with p[n] > mu_f. When none passes (never an empty set):
    ``"near_best"`` keeps the centres within 1e-6 of the best score (the authors' COCO code),
    ``"best_one"`` the single arg-max centre."""
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown LPCAM fallback {fallback!r}; known: {FALLBACKS}")
    chosen = np.flatnonzero(scores_n > mu_f)
    if len(chosen) or not len(scores_n):
        return chosen, False
    if fallback == "best_one":
        return np.array([int(np.argmax(scores_n))]), True
    return np.flatnonzero(scores_n > scores_n.max() - 1e-6), True


def select_context(scores_n: np.ndarray, low: float, high: float) -> np.ndarray:
    """Indices of context centres with low < p[n] < high (may be empty: no context term)."""
    return np.flatnonzero((scores_n > low) & (scores_n < high))


def select_prototypes(centres: list[dict], num_classes: int, cfg) -> tuple[list[dict], dict]:
    """Scored centre rows -> (the prototype rows ``cfg``'s mu_f / mu_b_low / mu_b_high keep, each
    with ``fallback``; which classes fell back, lack context, or have no prototype)."""
    chosen, fallbacks, no_context = [], [], []
    for c in range(num_classes):
        for kind in (FG, CONTEXT):
            members = [r for r in centres if r["class_id"] == c and r["kind"] == kind]
            scores = np.asarray([r["score"] for r in members])
            fell_back = False
            if kind == FG:
                idx, fell_back = select_foreground(scores, cfg.mu_f, cfg.fallback)
                if fell_back:
                    fallbacks.append(c)
            else:
                idx = select_context(scores, cfg.mu_b_low, cfg.mu_b_high)
                if len(idx) == 0:
                    no_context.append(c)
            chosen += [dict(members[i], fallback=bool(fell_back)) for i in idx]
    return chosen, {"fallback_classes": fallbacks, "classes_without_context": no_context,
                    "classes_without_prototypes": sorted(set(range(num_classes)) - {r["class_id"] for r in chosen})}

