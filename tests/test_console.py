"""The quick demo from the command line, as a user starts it: a config file and an override, a
quiet console (at most 40 lines, a progress bar per long stage, no Ray internals), the resolved
config recorded in the run directory."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wsss_ray.config_file import load_config

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_INTERNALS = ("Failed to query Ray Train Controller", "Running Dataset", "logging_progress.py",
                 "streaming_executor.py", "(RayTrainWorker", "Token authentication is enabled",
                 "Progress bars disabled", "UserWarning")


@pytest.mark.slow
def test_quick_demo_console_is_quiet_and_shows_progress(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    env.pop("WSSS_RAY_VERBOSE", None)
    done = subprocess.run([sys.executable, "-m", "wsss_ray.cli", "run", "configs/quick.yaml", "--run-dir", str(run_dir),
                           "-o", "lpcam.k=6"], cwd=ROOT, env=env, capture_output=True, timeout=900)
    # bytes, not text=True: universal newlines would turn the bars' in-place redraws (\r) into lines
    console = ANSI.sub("", (done.stdout + done.stderr).decode(errors="replace"))
    assert done.returncode == 0, console[-3000:]
    lines = console.rstrip("\n").split("\n")      # what a terminal scrolls: bars redraw in place (\r)
    assert len(lines) <= 40, "\n".join(lines)
    for noise in RAY_INTERNALS:
        assert noise not in console, noise
    screens = [part for line in lines for part in line.split("\r")]
    for stage in ("train cam", "maps cam"):       # the stages over 10 s on the quick demo
        assert any(s.startswith(f"{stage}:") and "100%" in s and "/s" in s for s in screens), stage
    assert "| cam |" in console and "| lpcam |" in console and f"artifacts in {run_dir}" in console
    assert f"Ray's logs in {run_dir}/logs/ray" in console                 # Ray's own logs: a file, not the console
    assert any((run_dir / "logs" / "ray").glob("python-core-driver-*.log"))
    recorded = load_config(str(run_dir / "config.yaml"))
    assert recorded.lpcam.k == 6 and recorded == load_config("quick", ("lpcam.k=6", f"run_dir={run_dir}"))
