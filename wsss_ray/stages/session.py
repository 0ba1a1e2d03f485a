"""One Ray session for a process: local when no cluster is given, the cluster under
``ray job submit`` (RAY_ADDRESS is set there)."""
from __future__ import annotations

import logging
import os

import ray

from wsss_ray.stages.progress import verbose

# driver-side loggers whose INFO lines (Ray Data's progress dumps, Ray Train's controller
# state) bury the stages' own progress; --verbose keeps them
QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")


# one-time notices that say nothing about the user's job (that auth is on by default, that the
# Ray Data bars we replace with ours are off)
SILENCED_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.data._internal.progress")
RAY_DATA_LOGGING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_data_logging.yaml")


def quiet_ray_logs() -> None:
    """Ray's INFO logging to warnings only; the workers' logs and Ray Data's INFO lines stay in
    Ray's session directory (ray-data.log)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SILENCED_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data re-reads its logging config for each dataset: the console handler at WARNING there
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)
    from ray.data._internal.logging import configure_logging
    configure_logging()


def ensure_ray(num_cpus: int | None = None, no_progress_timeout_s: float = 3600.0) -> None:
    """Quiet by default (one line a stage, our progress bars, warnings); WSSS_RAY_VERBOSE=1 shows
    the workers' output and Ray Data's progress bars as well."""
    loud = verbose()
    if not loud:
        quiet_ray_logs()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=loud, logging_level=logging.INFO if loud else logging.WARNING)
        else:
            # A local cluster gets more logical CPUs than cores: an actor pool on 2
            # cores can otherwise starve Ray Data's read and write tasks (DESIGN.md).
            # the dashboard (http://127.0.0.1:8265) on request: WSSS_RAY_DASHBOARD=1
            # workers import wsss_ray from this checkout even when it is not pip-installed
            package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
            ray.init(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1),
                     include_dashboard=os.environ.get("WSSS_RAY_DASHBOARD") == "1", log_to_driver=loud,
                     logging_level=logging.INFO if loud else logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    ctx = ray.data.DataContext.get_current()
    # Ray Data fails a dataset that moves no block for this long. One chunk (32 images) of
    # InferCam at 448 px takes ~18 min on a busy 2-core CPU, so an hour, not Ray's minutes.
    ctx.execution_no_progress_timeout_s = no_progress_timeout_s
    ctx.enable_progress_bars = loud
    ctx.print_on_execution_start = loud


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def ray_logs_dir() -> str:
    """Where this Ray session keeps its processes' logs on this node."""
    try:
        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:           # a private API: name the default location when it moves
        return "/tmp/ray/session_latest/logs"


def keep_ray_logs(run_dir: str, since: float) -> str:
    """Copy this node's Ray logs written since ``since`` (epoch seconds: a long-lived cluster
    holds other jobs' logs too) to ``<run_dir>/logs/ray/``; returns that URI, or "" when there
    is nothing to copy. Logs of other nodes stay on those nodes (the dashboard shows them)."""
    from wsss_ray.store import join_uri, open_fs, write_bytes_atomic
    source = ray_logs_dir()
    if not os.path.isdir(source):
        return ""
    target = join_uri(run_dir, "logs", "ray")
    fs, base = open_fs(target)
    copied = 0
    for folder, _, files in os.walk(source):
        for name in files:
            path = os.path.join(folder, name)
            try:
                if os.path.getmtime(path) < since or os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:             # a log rotated away while we walk
                continue
            write_bytes_atomic(fs, f"{base}/{os.path.relpath(path, source)}", data)
            copied += 1
    return target if copied else ""
