"""Interrupts end the job with a non-zero exit code and one line naming the stage; a rerun of the
same command resumes, and the finished run equals one that was never interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import shard_bytes

ROOT = Path(__file__).resolve().parents[1]


def run_job(run_dir: Path, on_line=None, timeout: float = 900, extra=()) -> tuple[int, str]:
    """The quick demo's CAM route from the command line; ``on_line(line, proc)`` sees each line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "wsss_ray.cli", "run", "configs/quick.yaml", "--run-dir", str(run_dir),
                             "-o", "methods=cam", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, deadline = [], time.monotonic() + timeout
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode(errors="replace")
        lines.append(line)
        if on_line:
            on_line(line, proc)
        assert time.monotonic() < deadline, "".join(lines[-50:])
    return proc.wait(timeout=60), "".join(lines)


def interrupt_when(stage: str, sig: int, ready=lambda: True):
    """Send ``sig`` once the stage has started and ``ready()`` holds (polled for up to 5 minutes)."""
    def on_line(line, proc):
        if f"] {stage} ..." in line:
            deadline = time.monotonic() + 300
            while not ready() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            proc.send_signal(sig)
    return on_line


@pytest.mark.slow
def test_interrupts_at_each_stage_exit_non_zero_and_the_rerun_resumes(quick_run, tmp_path):
    run_dir = tmp_path / "run"
    progress = run_dir / "progress" / "cam.json"
    code, out = run_job(run_dir, interrupt_when("train_cam", signal.SIGINT, progress.exists))
    assert code == 130 and "interrupted by SIGINT during train_cam; rerun the same command" in out, out[-3000:]
    assert not (run_dir / "checkpoints" / "cam" / "model.pt").exists()     # a partial model is not taken as done
    assert "Traceback" not in out, out[-3000:]

    maps = run_dir / "maps" / "cam"
    code, out = run_job(run_dir, interrupt_when("maps_cam", signal.SIGTERM, lambda: any(maps.glob("part-*.parquet"))))
    assert code == 143 and "interrupted by SIGTERM during maps_cam" in out, out[-3000:]
    assert not (run_dir / "eval" / "cam.json").exists()

    # the driver scores a small set in a fraction of a second: the Ray Data pass gives a signal time to land
    code, out = run_job(run_dir, interrupt_when("eval_cam", signal.SIGINT), extra=("-o", "eval.driver_max_images=0"))
    assert code == 130 and "interrupted by SIGINT during eval_cam" in out, out[-3000:]

    code, out = run_job(run_dir)
    assert code == 0, out[-3000:]
    reference = Path(quick_run[0])                  # the same classifier and CAM pass, never interrupted
    assert shard_bytes(maps) == shard_bytes(reference / "maps" / "cam")
    assert (run_dir / "eval" / "cam.json").read_bytes() == (reference / "eval" / "cam.json").read_bytes()
