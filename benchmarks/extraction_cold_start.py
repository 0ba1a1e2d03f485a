"""The CAM extraction stage in a fresh Ray session: the first call (cold task and actor
workers, as in the main job's first map pass) and a second call (workers warm).

    PYTHONPATH=. .venv/bin/python benchmarks/extraction_cold_start.py RUN_DIR [NAME]

RUN_DIR is a finished demo run (``checkpoints/cam``, ``manifest``), e.g. one made by
``jobs/lpcam_coco.py --methods cam --run-dir RUN_DIR``. Maps go to
``RUN_DIR/maps/_cold_start_probe`` and are deleted afterwards. Run it in a process of its
own: the point is a Ray session that has not started any worker yet. To time another
commit's code, put a checkout of it first on PYTHONPATH (the Ray workers follow it).

Writes ``benchmarks/results/<NAME>.json`` (default ``extraction_cold_start``).
"""
from __future__ import annotations

import shutil
import sys
import time

from _common import write_results
from wsss_ray.rundir import RunDir
from wsss_ray.stages.extract import extract_maps
from wsss_ray.stages.pipeline import demo_config
from wsss_ray.stages.session import ensure_ray

PROBE = "_cold_start_probe"


def timed_extraction(run: RunDir, cfg) -> float:
    shutil.rmtree(run.uri("maps", PROBE), ignore_errors=True)
    start = time.perf_counter()
    out = extract_maps(run, PROBE, "cam", run.uri("checkpoints", "cam"), cfg.cam, {})
    seconds = time.perf_counter() - start
    print(f"{out['images']} images in {seconds:.1f} s", flush=True)
    return seconds


def main(run_dir: str, name: str = "extraction_cold_start") -> None:
    import wsss_ray
    run, cfg = RunDir(run_dir), demo_config(run_dir)
    start = time.perf_counter()
    ensure_ray()
    init_s = time.perf_counter() - start
    try:
        cold_s, warm_s = timed_extraction(run, cfg), timed_extraction(run, cfg)
    finally:
        shutil.rmtree(run.uri("maps", PROBE), ignore_errors=True)
    write_results(name, {"run_dir": run_dir, "wsss_ray_from": wsss_ray.__file__, "ray_init_s": round(init_s, 2),
                         "first_extraction_s": round(cold_s, 2), "second_extraction_s": round(warm_s, 2),
                         "cam_config": vars(cfg.cam)})


if __name__ == "__main__":
    main(*sys.argv[1:3])
