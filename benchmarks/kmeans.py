"""LPCAM clustering: our ``spherical_kmeans`` (faiss) against the authors' k-means, the PyPI
package ``kmeans-pytorch`` (cosine distance), on the same features and the same K.

Features: EfficientNet-Lite0 (ImageNet) feature vectors of coco_tiny images at max side 448
(every stride-32 position is one 1280-d vector), else a gaussian mixture of the same shape.

kmeans-pytorch 0.3 has no iteration cap: it loops until the squared centre shift is below
its tolerance. This script stops it after ``--their-iters`` iterations or ``--their-budget``
seconds through its progress meter (the algorithm itself is untouched) and says whether it
converged; when it is stopped, its real time is longer and the speed-up is a lower bound.

Target: speed-up >= 20x.

    PYTHONPATH=. .venv/bin/python benchmarks/kmeans.py --max-wait 60
    PYTHONPATH=. .venv/bin/python benchmarks/kmeans.py --their-iters 1000 --their-budget 170 --tag uncapped --max-wait 60

Needs the test extra (``kmeans-pytorch``) and coco_tiny in ``--coco-root`` (else ``--synthetic``).
"""
from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch

from _common import COCO_TINY, add_load_args, measured, ratio, scratch_dir, show, stopwatch
from wsss_ray.cams.clustering import spherical_kmeans


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=20000)
    p.add_argument("--ks", default="12,20")
    p.add_argument("--our-iters", type=int, default=50, help="faiss niter (the pipeline's kmeans_iters)")
    p.add_argument("--their-iters", type=int, default=50, help="stop kmeans-pytorch after this many iterations")
    p.add_argument("--their-budget", type=float, default=60.0, help="... or after this many seconds")
    p.add_argument("--max-side", type=int, default=448)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--synthetic", action="store_true", help="gaussian mixture instead of real features")
    p.add_argument("--tag", default="", help="write results/kmeans_<tag>.json instead of results/kmeans.json")
    p.add_argument("--coco-root", default=COCO_TINY, help="coco_tiny data directory (features from it when present)")
    p.add_argument("--cache", default=os.path.join(scratch_dir("kmeans"), "features_{max_side}.npy"),
                   help="real features are kept here between runs ('' = no cache)")
    add_load_args(p)
    return p.parse_args()


# ------------------------------------------------------------------ features


def coco_features(root: str, count: int, max_side: int) -> np.ndarray:
    """(count, 1280) EfficientNet-Lite0 ImageNet features of coco_tiny positions, in file order."""
    from _models import effnet_model, to_tensor
    from wsss_ray.data.images import load_rgb
    model, cfg = effnet_model()
    files = sorted(glob.glob(os.path.join(root, "train2017", "*.jpg"))) + \
        sorted(glob.glob(os.path.join(root, "val2017", "*.jpg")))
    parts, total = [], 0
    for flip in (False, True):                       # flipped views only if the images run out
        for path in files:
            x = to_tensor([load_rgb(path, max_side=max_side)], cfg)
            with torch.no_grad():
                f = model.features(x.flip(-1) if flip else x)[0]
            parts.append(f.flatten(1).t().numpy())
            total += parts[-1].shape[0]
            if total >= count:
                return np.ascontiguousarray(np.concatenate(parts)[:count], np.float32)
    raise ValueError(f"only {total} feature vectors in {root}; ask for fewer --points")


def cached(path: str, count: int, make) -> np.ndarray:
    """Features from ``path`` when it holds at least ``count`` rows, else made and saved there."""
    if path and os.path.exists(path):
        points = np.load(path)
        if len(points) >= count:
            return points[:count]
    points = make()
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, points)
    return points


def mixture_features(count: int, dim: int = 1280, centres: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1, (centres, dim)).astype(np.float32)
    return means[rng.integers(0, centres, count)] + rng.normal(0, 0.7, (count, dim)).astype(np.float32)


# ------------------------------------------------------------------ the two k-means


class _Stop(Exception):
    pass


class IterationMeter:
    """Stands in for kmeans-pytorch's tqdm meter: counts iterations, stops the loop at a cap."""

    cap, budget = 50, 60.0
    last = None

    def __init__(self, *args, **kwargs):
        self.iterations, self.start = 0, time.perf_counter()
        IterationMeter.last = self

    def set_postfix(self, **kwargs):
        pass

    def update(self):
        self.iterations += 1
        if self.iterations >= self.cap or time.perf_counter() - self.start >= self.budget:
            raise _Stop


def theirs(points: np.ndarray, k: int, cap: int, budget: float, seed: int = 0) -> dict:
    import kmeans_pytorch
    kmeans_pytorch.tqdm = IterationMeter             # the package's progress bar hook
    IterationMeter.cap, IterationMeter.budget = cap, budget
    np.random.seed(seed)                             # its initialisation uses numpy's global RNG
    x = torch.from_numpy(points)
    cpu = os.times()
    start = time.perf_counter()
    converged = True
    try:
        assign, centres = kmeans_pytorch.kmeans(X=x, num_clusters=k, distance="cosine", device=torch.device("cpu"))
        centres, assign = centres.numpy(), assign.numpy()
    except _Stop:
        converged, centres, assign = False, None, None
    seconds = time.perf_counter() - start
    its = IterationMeter.last.iterations
    return {"seconds": seconds, **cpu_split(cpu), "iterations": its, "converged": converged,
            "seconds_per_iteration": seconds / its,
            "mean_cosine_to_centre": mean_cosine(points, assign, centres) if converged else None}


def ours(points: np.ndarray, k: int, iters: int, seed: int = 0) -> dict:
    cpu = os.times()
    clusters, seconds = stopwatch(spherical_kmeans, points, k, iters, seed, False)
    return {"seconds": seconds, **cpu_split(cpu), "iterations": iters, "clusters": len(clusters.sizes),
            "seconds_per_iteration": seconds / iters,
            "mean_cosine_to_centre": mean_cosine(points, clusters.assign, clusters.prototypes)}


def cpu_split(before) -> dict:
    """User and kernel CPU seconds of this process since ``before`` (an os.times())."""
    now = os.times()
    return {"cpu_user_s": now.user - before.user, "cpu_system_s": now.system - before.system}


def mean_cosine(points: np.ndarray, assign: np.ndarray, centres: np.ndarray) -> float:
    """The spherical k-means objective: mean cosine between each point and its centre."""
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    return float(np.sum(unit(points) * unit(np.nan_to_num(centres))[assign], 1).mean())


def compare(points: np.ndarray, k: int, args) -> dict:
    mine = ours(points, k, args.our_iters)
    other = theirs(points, k, args.their_iters, args.their_budget)
    row = {"ours": mine, "kmeans_pytorch": other,
           "speedup": ratio(other["seconds"], mine["seconds"]),
           "speedup_is_lower_bound": not other["converged"],
           "speedup_per_iteration": ratio(other["seconds_per_iteration"], mine["seconds_per_iteration"])}
    print(f"K={k}:", flush=True)
    show("ours (faiss) seconds", mine["seconds"], f"({args.our_iters} iterations)")
    state = "converged" if other["converged"] else "stopped, not converged"
    show("kmeans-pytorch seconds", other["seconds"], f"({other['iterations']} iterations, {state})")
    show("kmeans-pytorch CPU user / kernel seconds", f"{other['cpu_user_s']:.1f} / {other['cpu_system_s']:.1f}")
    show("speed-up" + (" (lower bound)" if row["speedup_is_lower_bound"] else ""), row["speedup"], "x")
    show("speed-up per iteration", row["speedup_per_iteration"], "x")
    return row


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    real = not args.synthetic and os.path.isdir(args.coco_root)
    if real:
        points, feature_seconds = stopwatch(cached, args.cache.format(max_side=args.max_side), args.points,
                                            lambda: coco_features(args.coco_root, args.points, args.max_side))
    else:
        points, feature_seconds = stopwatch(mixture_features, args.points)
    source = (f"EfficientNet-Lite0 ImageNet features of coco_tiny at max side {args.max_side}" if real
              else "gaussian mixture (40 centres)")
    print(f"features: {points.shape} from {source} ({feature_seconds:.1f}s to compute or load)", flush=True)
    measured("kmeans" + (f"_{args.tag}" if args.tag else ""), args, lambda: {"features": {"shape": list(points.shape), "source": source},
                                      "by_k": {k: compare(points, int(k), args) for k in args.ks.split(",")}})


if __name__ == "__main__":
    main()
