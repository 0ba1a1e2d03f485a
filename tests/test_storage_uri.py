"""Run directories addressed as URIs (pyarrow filesystems), not only as local paths."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from wsss_ray.rundir import RunDir

pytestmark = pytest.mark.slow


def test_extract_and_evaluate_on_a_file_uri_run_dir(quick_run, tmp_path):
    from wsss_ray.stages.evaluate import evaluate_maps
    from wsss_ray.stages.extract import extract_maps
    run_dir, cfg, _ = quick_run
    local = tmp_path / "uri_run"
    shutil.copytree(Path(run_dir, "manifest"), local / "manifest")
    shutil.copytree(Path(run_dir, "checkpoints", "cam"), local / "checkpoints" / "cam", ignore=shutil.ignore_patterns("epochs"))
    run = RunDir(f"file://{local}")
    out = extract_maps(run, "cam", "cam", run.uri("checkpoints", "cam"), cfg.cam)
    assert out["images"] == 96
    result = evaluate_maps(run, "cam", "demo", cfg.eval)
    reference = evaluate_maps(RunDir(run_dir), "cam", "demo", cfg.eval, write=False)
    assert result["miou"] == reference["miou"]                 # same maps, same numbers
    assert (local / "eval" / "cam.json").exists() and (local / "eval" / "cam.png").exists()
    ours = pq.read_table(str(local / "maps" / "cam")).sort_by("image_id")
    theirs = pq.read_table(str(Path(run_dir, "maps", "cam"))).sort_by("image_id")
    assert ours.column("data").to_pylist() == theirs.column("data").to_pylist()
