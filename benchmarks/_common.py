"""Helpers shared by the benchmark scripts: timing, machine description, result files.

Every script prints its figures and writes them to ``benchmarks/results/<script>.json``;
those JSON files are the record behind the figures in docs/PERFORMANCE.md.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEMO_CKPT = "/tmp/runs/full1/checkpoints/cam"
COCO_CKPT = "/tmp/runs/coco_ref/checkpoints/cam"
COCO_TINY = str(BENCH_DIR.parent.parent / "shared" / "data" / "coco_tiny")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import torch
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "gpu": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__}


def checkpoint_ready(directory: str) -> bool:
    """A finished checkpoint has model.pt (written last) next to model.json."""
    return os.path.exists(os.path.join(directory, "model.pt")) and os.path.exists(os.path.join(directory, "model.json"))


def timed(fn: Callable, repeats: int = 3, warmup: int = 1) -> dict:
    """Run ``fn`` warmup + repeats times; seconds of each timed run, their median and min."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs_s": runs}


def stopwatch(fn: Callable, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def command_line() -> str:
    script = os.path.relpath(sys.argv[0], BENCH_DIR.parent)
    return " ".join(["PYTHONPATH=. .venv/bin/python", script, *sys.argv[1:]])


def write_results(name: str, data: dict) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the machine and the command line."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "command": command_line(), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=False, default=_plain) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def show(label: str, value, unit: str = "") -> None:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"  {label:<48} {text} {unit}".rstrip(), flush=True)


def ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def start_ray(num_cpus: int = 4) -> None:
    """The package's local Ray session, with Ray Data's progress output turned down."""
    import logging

    import ray
    from wsss_ray.stages.session import ensure_ray
    ensure_ray(num_cpus=num_cpus)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def shard_steady_rate(directory: str) -> dict:
    """Steady-state rate from the shard files' modification times: images written after the
    first shard, over the time between the first and the last shard (start-up excluded)."""
    import pyarrow.parquet as pq
    shards = sorted((os.path.getmtime(os.path.join(directory, n)), n) for n in os.listdir(directory)
                    if n.startswith("part-") and n.endswith(".parquet"))
    if len(shards) < 2:
        return {"shards": len(shards), "images_per_s": float("nan")}
    counts = [pq.read_metadata(os.path.join(directory, n)).num_rows for _, n in shards]
    span = shards[-1][0] - shards[0][0]
    return {"shards": len(shards), "span_s": span, "images_after_first": sum(counts[1:]),
            "images_per_s": sum(counts[1:]) / span if span > 0 else float("nan")}
