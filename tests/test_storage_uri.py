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


@pytest.fixture(scope="module")
def s3_run_root():
    """An S3 bucket served offline by moto; the endpoint rides in the URI's query."""
    moto_server = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    admin, _ = pafs.FileSystem.from_uri(f"s3://wsss-test?{query}&allow_bucket_creation=true")
    admin.create_dir("wsss-test")
    fs, _ = pafs.FileSystem.from_uri(f"s3://wsss-test?{query}")
    yield f"s3://wsss-test/run?{query}", fs
    server.stop()


def test_quick_flow_on_an_s3_run_dir(quick_run, s3_run_root, tmp_path, monkeypatch):
    """Demo world, Ray Train epochs and checkpoints, CAM and LPCAM shards, prototypes and eval
    all live in the bucket; a rerun resumes from it; nothing lands on the local disk."""
    import pyarrow.fs as pafs
    from wsss_ray.models.checkpoint import latest_epoch
    from wsss_ray.stages.pipeline import demo_config, run_pipeline
    from wsss_ray.store import join_uri
    root, fs = s3_run_root
    monkeypatch.chdir(tmp_path)          # a key mistaken for a local path would land here
    cfg = demo_config(root, quick=True, methods=("cam", "lpcam"))
    summary = run_pipeline(cfg)
    keys = {i.path for i in fs.get_file_info(pafs.FileSelector("wsss-test/run", recursive=True))}
    for key in ("manifest/manifest.parquet", "checkpoints/cam/model.pt", "checkpoints/cam/model.json",
                "prototypes/lpcam.parquet", "eval/cam.json", "eval/lpcam.json", "eval/summary.md",
                "demo_world/images/00095.png"):
        assert f"wsss-test/run/{key}" in keys, key
    last = latest_epoch(join_uri(root, "checkpoints", "cam", "epochs"))
    assert last.startswith(f"s3://wsss-test/run/checkpoints/cam/epochs/epoch-{cfg.train.epochs - 1:03d}?")
    assert any(k.startswith("wsss-test/run/ray_train/cam") for k in keys)       # Ray Train's own checkpoints
    maps = pq.read_table("wsss-test/run/maps/cam", filesystem=fs)
    assert sorted(maps.column("image_id").to_pylist()) == list(range(96))     # every image exactly once
    assert list(tmp_path.iterdir()) == []
    # same seeds, same data: the bucket run scores as the local quick run did
    _, _, local = quick_run
    assert summary["results"]["cam"]["miou"] == pytest.approx(local["results"]["cam"]["miou"], abs=1e-9)
    again = run_pipeline(cfg)             # everything is found in the bucket and skipped
    assert again["train"]["skipped"] and again["results"] == summary["results"]
    assert {i.path for i in fs.get_file_info(pafs.FileSelector("wsss-test/run/maps", recursive=True))} == \
        {k for k in keys if k.startswith("wsss-test/run/maps/")}
