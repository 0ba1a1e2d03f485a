"""Training input: images/s and the share of step time spent waiting for data.

Trains the classifier of a preset (the quick demo, or the coco_tiny reference protocol) in
a fresh process per measurement and reads each epoch's ``state.json``. With
``--compare-ref REF`` the same measurement runs alternately on a temporary git worktree
of REF (e.g. the commit before training input moved to Ray Data), so that before and
after share the machine's load and their ratio is taken in one run.

Reported per tree: median steady-state images/s over the epochs after the first, the fit's
wall seconds (Ray Train start, the linear probe's feature pass and every epoch), and, where
the tree records it, ``data_wait_share`` (time the worker waited for its next batch / epoch
time). The old in-loop decoding waited for every image it decoded, so for REF the script
also times that decoding alone on the same images (``decode_seconds_per_epoch``).

    python benchmarks/train_input.py --preset quick --compare-ref 7511450 --rounds 2
    python benchmarks/train_input.py --preset coco_tiny --coco-root ../shared/data/coco_tiny \
        --compare-ref 7511450 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside the measured tree (PYTHONPATH=<tree>): only APIs both trees share.
MEASURE = r"""
import dataclasses, json, sys, time
from pathlib import Path
from wsss_ray.rundir import RunDir
from wsss_ray.stages.manifest import build_manifest
from wsss_ray.stages.pipeline import coco_config, demo_config
from wsss_ray.stages.session import ensure_ray
from wsss_ray.stages.train import train_classifier
preset, run_dir, root, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = (demo_config(run_dir, quick=True) if preset == "quick" else
       coco_config(run_dir, root, split="train+val", class_subset="voc20", protocol="reference"))
train = dataclasses.replace(cfg.train, epochs=epochs or cfg.train.epochs, keep_epochs=0)
ensure_ray()
run = RunDir(run_dir)
build_manifest(run, cfg.dataset, False)
start = time.perf_counter()
train_classifier(run, "bench", cfg.model, train)
wall = time.perf_counter() - start
states = [json.loads(p.read_text()) for p in sorted(Path(run_dir, "checkpoints", "bench", "epochs").glob("*/state.json"))]
print("RESULT " + json.dumps({"fit_seconds": wall, "epochs": states}))
"""


def measure(tree: Path, preset: str, root: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="train_input_") as run_dir:
        env = {**os.environ, "PYTHONPATH": str(tree), "RAY_DEDUP_LOGS": "1"}
        proc = subprocess.run([sys.executable, "-c", MEASURE, preset, run_dir, root, str(epochs)], env=env,
                              capture_output=True, text=True, cwd=tree)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"measurement in {tree} failed:\n{proc.stderr[-3000:]}")
        out = json.loads(lines[-1][len("RESULT "):])
        out["images"] = count_images(run_dir)
        return out


def count_images(run_dir: str) -> int:
    import pyarrow.parquet as pq
    table = pq.read_table(Path(run_dir, "manifest", "manifest.parquet"), columns=["labels"])
    return sum(1 for labels in table.column("labels").to_pylist() if labels)


def summarise(run: dict) -> dict:
    epochs = run["epochs"][1:] or run["epochs"]            # the first epoch carries start-up
    seconds = statistics.median(e["epoch_seconds"] for e in epochs)
    out = {"images": run["images"], "fit_seconds": run["fit_seconds"], "median_epoch_seconds": seconds,
           "images_per_second": run["images"] / seconds}
    waits = [e["data_wait_share"] for e in epochs if "data_wait_share" in e]
    if waits:
        out["data_wait_share"] = statistics.median(waits)
    return out


def old_decode_seconds(preset: str, root: str) -> float:
    """One epoch's decoding + augmentation (the linear probe: its one feature pass), timed
    alone in this process: what the old loop waited for, split over its workers."""
    from wsss_ray.data.train_batches import ClassifierBatches, ProbeImages
    from wsss_ray.stages.manifest import build_manifest
    from wsss_ray.stages.pipeline import coco_config, demo_config
    from wsss_ray.stages.train import probe_mode, training_rows
    from wsss_ray.rundir import RunDir
    with tempfile.TemporaryDirectory(prefix="train_input_decode_") as run_dir:
        cfg = (demo_config(run_dir, quick=True) if preset == "quick" else
               coco_config(run_dir, root, split="train+val", class_subset="voc20", protocol="reference"))
        run = RunDir(run_dir)
        build_manifest(run, cfg.dataset, False)
        rows, num_classes = training_rows(run)
        m, t = cfg.model, cfg.train
        start = time.perf_counter()
        for i, row in enumerate(rows):
            plan = {"epoch": 0, "step": 0, "index": [i], "uri": [row["uri"]], "labels": [row["labels"]]}
            if probe_mode(t, m):
                ProbeImages(t.resize_long[0], m.image_mean, m.image_std)(plan)
            else:
                ClassifierBatches(num_classes, t.resize_long, t.crop_size, t.hflip, m.image_mean, m.image_std,
                                  t.seed)(plan)
        return (time.perf_counter() - start) / max(1, t.num_workers)


def ref_wait_share(preset: str, decode_seconds: float, before: dict) -> float:
    """The old loop's estimated share of time waiting for decoding. The quick preset decodes
    every epoch (share of an epoch); the coco_tiny linear probe decodes once, in its feature
    pass, and its epochs run on cached features (share of the whole fit)."""
    per = before["median_epoch_seconds"] if preset == "quick" else before["fit_seconds"]
    return min(1.0, decode_seconds / per)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("quick", "coco_tiny"), default="quick")
    parser.add_argument("--coco-root", default=str(REPO.parent / "shared" / "data" / "coco_tiny"))
    parser.add_argument("--epochs", type=int, default=0, help="epochs to train (0: the preset's)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per tree, alternated")
    parser.add_argument("--compare-ref", default="", help="git ref to measure alternately (before)")
    parser.add_argument("--out", default="", help="JSON file (default benchmarks/results/train_input_<preset>.json)")
    args = parser.parse_args()
    trees = {"current": REPO}
    worktree = None
    if args.compare_ref:
        worktree = Path(tempfile.mkdtemp(prefix="train_input_ref_"))
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.compare_ref],
                       check=True, capture_output=True)
        trees = {args.compare_ref: worktree, "current": REPO}
    try:
        runs = {name: [] for name in trees}
        for r in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(summarise(measure(tree, args.preset, args.coco_root, args.epochs)))
                print(f"round {r} {name}: {json.dumps(runs[name][-1])}", flush=True)
    finally:
        if worktree:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
    result = {"command": " ".join(["python", "benchmarks/train_input.py"] + sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "preset": args.preset, "rounds": args.rounds, "cpu_count": os.cpu_count(), "runs": runs,
              "median": {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}}
    if args.compare_ref:
        before, after = result["median"][args.compare_ref], result["median"]["current"]
        result["ratio_current_over_ref"] = {
            "images_per_second": after["images_per_second"] / before["images_per_second"],
            "fit_seconds": after["fit_seconds"] / before["fit_seconds"]}
        result["ref_decode_seconds_per_epoch"] = old_decode_seconds(args.preset, args.coco_root)
        result["ref_estimated_wait_share"] = ref_wait_share(args.preset, result["ref_decode_seconds_per_epoch"],
                                                            before)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"train_input_{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
