"""Helpers shared by the benchmark scripts (and the diagnoses in ``experiments/``, which
import them as ``benchmarks._common``): timing, machine description, result files.

Every script prints its figures and writes them to ``results/<script>.json`` next to itself
(``benchmarks/results/`` or ``experiments/results/``); those JSON files are the record behind
the figures in docs/PERFORMANCE.md and docs/RESULTS.md.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_DIR = BENCH_DIR.parent
# default checkpoints: the README's demo run (`bash scripts/demo`, run dir runs/demo) and its
# coco_tiny reference command (run dir runs/coco_tiny); every script takes others as arguments
DEMO_CKPT = str(REPO_DIR / "runs" / "demo" / "checkpoints" / "cam")
COCO_CKPT = str(REPO_DIR / "runs" / "coco_tiny" / "checkpoints" / "cam")
COCO_TINY = str(REPO_DIR.parent / "shared" / "data" / "coco_tiny")   # the README's data location


def scratch_dir(name: str) -> str:
    """Default work directory of a script: ``wsss_bench/<name>`` under the system's temp dir."""
    return os.path.join(tempfile.gettempdir(), "wsss_bench", name)


def results_dir() -> Path:
    """``results/`` next to the running script (benchmarks/ or experiments/)."""
    here = Path(sys.argv[0]).resolve().parent
    return here / "results" if here.name in ("benchmarks", "experiments") else RESULTS_DIR


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_kind() -> dict:
    """CPU family, model and widest vector ISA: torch's CPU kernels differ between AVX2 and
    AVX-512 machines, so trained weights (and every figure after them) differ too."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    flags = set(fields.get("flags", "").split())
    return {"cpu_family": fields.get("cpu family"), "cpu_model_number": fields.get("model"),
            "avx512": any(f.startswith("avx512") for f in flags), "avx2": "avx2" in flags}


def machine() -> dict:
    import torch
    gpu = torch.cuda.is_available()
    return {"cpu_model": cpu_model(), **cpu_kind(), "cores": os.cpu_count(), "gpu": gpu,
            "gpu_name": torch.cuda.get_device_name(0) if gpu else None,
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
    script = os.path.relpath(sys.argv[0], REPO_DIR)
    return " ".join(["PYTHONPATH=. .venv/bin/python", script, *sys.argv[1:]])


def write_results(name: str, data: dict) -> Path:
    """Write ``results/<name>.json`` (next to the script) with the machine and the command line."""
    out_dir = results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "command": command_line(), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    path = out_dir / f"{name}.json"
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


def busy_fraction(seconds: float = 5.0) -> float:
    """Fraction of all cores busy over ``seconds`` (0 = idle machine)."""
    import psutil
    return psutil.cpu_percent(interval=seconds) / 100.0


def wait_for_quiet(max_wait_s: float = 600.0, threshold: float = 0.15) -> dict:
    """Other jobs share this machine: wait (up to ``max_wait_s``) until the cores are idle
    for a 5 s window, so timings are not taken under someone else's load. Returns what
    was seen, for the result file."""
    start = time.perf_counter()
    busy = busy_fraction()
    while busy > threshold and time.perf_counter() - start < max_wait_s:
        print(f"machine busy ({busy:.0%} of cores); waiting ...", flush=True)
        time.sleep(25)
        busy = busy_fraction()
    return {"busy_fraction_at_start": busy, "waited_s": time.perf_counter() - start,
            "started_quiet": busy <= threshold}


class OtherLoad:
    """CPU seconds spent by processes outside this benchmark while it runs. A thread samples
    this process's descendants every 0.5 s, so Ray workers that exit before the end still
    count as ours (up to their last 0.5 s)."""

    def __enter__(self):
        import psutil
        self.cores = psutil.cpu_count() or 1
        self.seen: dict[tuple[int, float], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.start_wall, self.start_busy, self.start_mine = time.perf_counter(), _system_busy(), self._mine()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        wall = time.perf_counter() - self.start_wall
        other = max((_system_busy() - self.start_busy) - (self._mine() - self.start_mine), 0.0)
        self.report = {"wall_s": wall, "other_cpu_s": other,
                       "other_busy_fraction": other / (wall * self.cores) if wall > 0 else 0.0}

    def _watch(self):
        while not self.stop.wait(0.5):
            self._sample()

    def _sample(self):
        import psutil
        for child in psutil.Process().children(recursive=True):
            try:
                t = child.cpu_times()
                self.seen[(child.pid, child.create_time())] = t.user + t.system
            except psutil.Error:
                pass

    def _mine(self) -> float:
        import psutil
        self._sample()
        t = psutil.Process().cpu_times()
        return t.user + t.system + sum(self.seen.values())


def _system_busy() -> float:
    import psutil
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def add_load_args(parser) -> None:
    parser.add_argument("--max-wait", type=float, default=600.0,
                        help="wait up to this many seconds for other jobs to leave the cores idle")


def measured(name: str, args, body: Callable[[], dict]) -> dict:
    """Wait for a quiet machine, run ``body`` while recording other jobs' CPU use, write results."""
    quiet = wait_for_quiet(args.max_wait)
    with OtherLoad() as load:
        data = body()
    data["load"] = {**quiet, **load.report}
    show("other jobs' share of the cores during the run", load.report["other_busy_fraction"])
    write_results(name, {"args": vars(args), **data})
    return data
