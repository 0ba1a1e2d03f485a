"""Peak memory of IRN's random walk: the sparse walk (wsss_ray.refine.random_walk) at growing
grid sizes, and the dense squaring reference where it fits.

Each measurement runs in a fresh subprocess: inputs are built first, the kernel's peak-RSS
counter is reset (``/proc/self/clear_refs``), the walk runs, and the peak resident set above
the pre-walk baseline is the walk's memory. Sizes are walk grids (IRN walks at stride 4, so
128 x 128 is a 512 px image). Radius 5, beta 10, 2^8 steps, 3 seed channels, float32.

Also reported: the bytes the walk's own tensors need (CSR values + int32 column indices +
row pointers + two (N, L) iterates), i.e. what a perfect allocator would show.

Target: memory at most linear in pixels (the memory ratio between sizes <= the pixel ratio).

    PYTHONPATH=. .venv/bin/python benchmarks/random_walk_memory.py

Linux only (``/proc/self/clear_refs``); no checkpoint or data needed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _common import show, write_results


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(size: int, mode: str, radius: int, exp_times: int) -> dict:
    """One measurement (runs in its own process)."""
    import torch
    from wsss_ray.refine.random_walk import affinity_field, random_walk, random_walk_dense, transition_sparse
    torch.set_num_threads(1)
    torch.manual_seed(0)
    boundary = torch.rand(size, size) * 0.5
    cams = torch.rand(3, size, size)
    offsets, field = affinity_field(boundary, radius)
    walk = random_walk if mode == "sparse" else random_walk_dense
    walk(cams[:, :8, :8], field[:, :8, :8], offsets, 10.0, 1)            # warm-up: allocator, kernels
    base = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                                      # reset VmHWM to the current RSS
    start = time.perf_counter()
    walk(cams, field, offsets, 10.0, exp_times)
    seconds = time.perf_counter() - start
    peak = _rss_kb("VmHWM")
    nnz = transition_sparse(field, offsets, 10.0).values().numel() if mode == "sparse" else (size * size) ** 2
    tensor_bytes = (nnz * 8 + (size * size + 1) * 4 + 2 * size * size * 3 * 4 if mode == "sparse"
                    else 2 * nnz * 4 + 2 * size * size * 3 * 4)
    return {"size": size, "pixels": size * size, "mode": mode, "peak_bytes": (peak - base) * 1024,
            "tensor_bytes": int(tensor_bytes), "transition_nnz": int(nnz), "seconds": seconds,
            "peak_bytes_per_pixel": (peak - base) * 1024 / (size * size)}


def measure(size: int, mode: str, args) -> dict:
    """Median over ``args.repeats`` fresh processes. A fixed glibc mmap threshold keeps large
    buffers in mmap (returned to the OS on free), so the peak RSS is not inflated by heap
    reuse decisions that vary from run to run."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
               MALLOC_MMAP_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child", f"{size}:{mode}", "--radius", str(args.radius),
           "--exp-times", str(args.exp_times)]
    runs = [json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                       .stdout.strip().splitlines()[-1]) for _ in range(args.repeats)]
    runs.sort(key=lambda r: r["peak_bytes"])
    best = dict(runs[len(runs) // 2])
    best["peak_bytes_runs"] = [r["peak_bytes"] for r in runs]
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,128,256", help="sparse walk grid sides")
    p.add_argument("--dense-sizes", default="32,64", help="dense reference grid sides (N^2 memory)")
    p.add_argument("--radius", type=int, default=5)
    p.add_argument("--exp-times", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per size (median reported)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        size, mode = args.child.split(":")
        print(json.dumps(child(int(size), mode, args.radius, args.exp_times)))
        return
    rows = [measure(int(s), "sparse", args) for s in args.sizes.split(",") if s]
    rows += [measure(int(s), "dense", args) for s in args.dense_sizes.split(",") if s]
    for r in rows:
        show(f"{r['mode']} {r['size']}x{r['size']} peak", r["peak_bytes"] / 2**20, "MiB")
        show(f"{r['mode']} {r['size']}x{r['size']} peak per pixel", r["peak_bytes_per_pixel"], "B")
        show(f"{r['mode']} {r['size']}x{r['size']} time", r["seconds"], "s")
    sparse = [r for r in rows if r["mode"] == "sparse"]
    growth = []
    for a, b in zip(sparse, sparse[1:]):
        g = {"from": a["size"], "to": b["size"], "pixel_ratio": b["pixels"] / a["pixels"],
             "memory_ratio": b["peak_bytes"] / max(a["peak_bytes"], 1)}
        g["at_most_linear"] = g["memory_ratio"] <= g["pixel_ratio"] * 1.10   # RSS noise: ~5%
        growth.append(g)
        show(f"sparse {a['size']} -> {b['size']}: memory ratio / pixel ratio",
             f"{g['memory_ratio']:.2f} / {g['pixel_ratio']:.0f}")
    write_results("random_walk_memory", {"args": {k: v for k, v in vars(args).items() if k != "child"},
                                         "rows": rows, "sparse_growth": growth,
                                         "target": "sparse memory ratio <= pixel ratio (at most linear; 10% allowance for RSS noise)"})


if __name__ == "__main__":
    main()
