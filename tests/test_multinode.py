"""The main flow on a real multi-node Ray cluster on this machine (a head and two worker nodes,
each its own raylet), with a worker node lost during extraction and during training. The
cluster runs in its own process (tests/multinode_flow.py); its process group is killed
whatever happens, so no Ray process outlives the test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def multinode_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "multinode_flow.py"), str(tmp_path)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=1200)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)          # the raylets and workers the cluster started, if any are left
        except ProcessLookupError:
            pass
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return json.loads((tmp_path / "report.json").read_text()), text


@pytest.mark.slow
def test_the_flow_spreads_over_nodes_and_survives_losing_one(multinode_report):
    report, log = multinode_report
    assert report["nodes_at_start"] == 3
    assert report["train_nodes"] == 2, report                  # SPREAD put the two ranks on two nodes
    assert 0.15 < report["miou"] < 0.35, report
    # a worker node lost during extraction: every image once, the same bytes as the undisturbed pass
    assert report["extraction_node_removed_after_shards"] >= 1
    assert report["extraction_nodes"] >= 2 and report["extraction_images"] == 96, report
    assert report["shards_equal"], report
    # the node of a training rank lost after an epoch: Ray Train restarts, resumes, ends the same
    assert report.get("training_node_removed"), report
    assert report["weights_equal"], report
