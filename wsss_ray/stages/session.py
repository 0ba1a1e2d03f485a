"""One Ray session for a process: local when no cluster is given, the cluster under
``ray job submit`` (RAY_ADDRESS is set there)."""
from __future__ import annotations

import os

import ray


def ensure_ray(num_cpus: int | None = None, no_progress_timeout_s: float = 3600.0) -> None:
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=True)
        else:
            # A local cluster gets more logical CPUs than cores: an actor pool on 2
            # cores can otherwise starve Ray Data's read and write tasks (DESIGN.md).
            # the dashboard (http://127.0.0.1:8265) on request: WSSS_RAY_DASHBOARD=1
            # workers import wsss_ray from this checkout even when it is not pip-installed
            package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1),
                     include_dashboard=os.environ.get("WSSS_RAY_DASHBOARD") == "1", log_to_driver=True,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    ctx = ray.data.DataContext.get_current()
    # Ray Data fails a dataset that moves no block for this long. One chunk (32 images) of
    # InferCam at 448 px takes ~18 min on a busy 2-core CPU, so an hour, not Ray's minutes.
    ctx.execution_no_progress_timeout_s = no_progress_timeout_s
    ctx.enable_progress_bars = True


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))
