"""`ray job submit` for real: start a local head (`ray start --head --block`), submit
`jobs/lpcam_coco.py --quick` with `--working-dir .`, wait, check the run directory, and
stop exactly the cluster this test started.

Ray 2.60 turns token authentication on by default: the test generates a token in a
private path and hands it to the head and to the client through RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH.

The suite's own Ray session already runs a dashboard agent on the default HTTP port 52365;
a second head on that port starts an agent without its HTTP server and every submission
answers "No available agent". The head therefore gets free ports for its agents.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(tmp_path: Path) -> dict:
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")   # the head resolves `python` here
    return env


def wait_for_dashboard(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(1)
    raise TimeoutError("the Ray dashboard (job server) did not come up")


def submit_when_agent_ready(cmd: list, env: dict, attempts: int = 24) -> subprocess.CompletedProcess:
    """The job agent starts after the dashboard port opens; on a loaded machine that can take
    a while, and the server answers 'No available agent' until then: retry only that."""
    for _ in range(attempts):
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if "No available agent" not in done.stdout + done.stderr:
            return done
        time.sleep(5)
    return done


def test_ray_job_submit_quick_demo(tmp_path):
    env = cluster_env(tmp_path)
    gcs_port, dash_port, agent_http, agent_grpc = (free_port() for _ in range(4))
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Ray's unix socket paths must stay under ~107 bytes: pytest's tmp_path is too long
    ray_tmp = tempfile.mkdtemp(prefix="rayjs", dir="/tmp")
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=4",
         "--include-dashboard=true", f"--dashboard-port={dash_port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = tmp_path / "run"
    try:
        try:
            wait_for_dashboard(dash_port, head)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(tmp_path / 'head.log').read_text()[-3000:]}") from exc
        submit = submit_when_agent_ready(
            [ray_bin, "job", "submit", f"--address=http://127.0.0.1:{dash_port}", "--working-dir", str(ROOT),
             "--", "python", "jobs/lpcam_coco.py", "--quick", "--methods", "cam,lpcam", "--run-dir", str(run_dir)],
            env)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in (submit.stdout + submit.stderr).lower()
        for method in ("cam", "lpcam"):
            result = json.loads((run_dir / "eval" / f"{method}.json").read_text())
            assert result["num_images"] == 96 and 0 < result["best"]["miou"] <= 1
        assert "| lpcam |" in (run_dir / "eval" / "summary.md").read_text()
    finally:
        stop_head(head)
        head_log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def stop_head(head: subprocess.Popen) -> None:
    """--block: SIGTERM to its process group stops this cluster only (no global `ray stop`)."""
    if head.poll() is not None:
        return
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
