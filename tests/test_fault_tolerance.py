"""Fault tolerance for real: SIGKILL a Ray Train worker mid-fit and a map actor mid-run."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from wsss_ray.rundir import RunDir

pytestmark = pytest.mark.slow


def ray_processes(name: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith(f"ray::{name}"):
            found.append(proc)
    return found


def run_in_thread(fn, *args, **kwargs):
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:             # surfaced by the test
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def test_killed_train_worker_resumes_from_last_checkpoint(quick_run):
    from wsss_ray.stages.train import train_classifier
    run_dir, cfg, _ = quick_run
    train = dataclasses.replace(cfg.train, epochs=25, keep_epochs=0)      # keep all: the mtimes below tell
    epochs_dir = Path(run_dir, "checkpoints", "killed", "epochs")
    thread, box = run_in_thread(train_classifier, RunDir(run_dir), "killed", cfg.model, train)
    wait_for(lambda: (epochs_dir / "epoch-002" / "state.json").exists(), 240, "no epoch checkpoint appeared")
    first_epoch_written = (epochs_dir / "epoch-000" / "state.json").stat().st_mtime
    victims = ray_processes("RayTrainWorker")
    assert victims, "no Ray Train worker process to kill"
    os.kill(victims[0].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    assert Path(run_dir, "checkpoints", "killed", "model.pt").exists()
    assert sorted(p.name for p in epochs_dir.iterdir()) == [f"epoch-{i:03d}" for i in range(25)]
    # resumed, not restarted: the epochs before the kill were not trained (written) again
    assert (epochs_dir / "epoch-000" / "state.json").stat().st_mtime == first_epoch_written


def test_killed_map_actor_every_image_exactly_once(quick_run):
    from wsss_ray.stages.extract import extract_maps
    run_dir, cfg, _ = quick_run
    out_dir = Path(run_dir, "maps", "cam_killed")
    cam = dataclasses.replace(cfg.cam, num_actors=1)
    thread, box = run_in_thread(extract_maps, RunDir(run_dir), "cam_killed", "cam",
                                str(Path(run_dir, "checkpoints", "cam")), cam, chunk_size=8)
    wait_for(lambda: len(list(out_dir.glob("part-*.parquet"))) >= 2, 240, "no shard appeared")
    victims = ray_processes("MapWorker")
    assert victims, "no map actor process to kill"
    os.kill(victims[0].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    ids = pq.read_table(str(out_dir)).column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 96
    ref_ids = sorted(pq.read_table(str(Path(run_dir, "maps", "cam"))).column("image_id").to_pylist())
    assert sorted(ids) == ref_ids
