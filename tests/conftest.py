"""Shared fixtures: one Ray session for the whole test run, and one quick demo run that
several end-to-end tests read (running the pipeline once keeps the suite fast)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

COCO_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny"

# The S3 tests talk to a local moto server; any key pair works there. Set before the Ray
# session starts so its workers inherit them; the metadata lookup would only add timeouts.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def ray_session():
    import ray
    from wsss_ray.stages.session import ensure_ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ensure_ray(num_cpus=4, no_progress_timeout_s=300)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quick_run(ray_session, tmp_path_factory):
    """The --quick demo flow with every method, run once for the session."""
    from wsss_ray.config import AdvCamConfig
    from wsss_ray.stages.pipeline import demo_config, run_pipeline
    run_dir = str(tmp_path_factory.mktemp("quick_run"))
    cfg = demo_config(run_dir, quick=True, methods=("cam", "lpcam", "lpcam_f", "recam", "infercam", "advcam"))
    # AdvCAM's 27 climbing steps cost ~95x CAM; two steps exercise the same stage wiring
    cfg = dataclasses.replace(cfg, advcam=AdvCamConfig(steps=2), recam_all_weights=True, infercam_ablation=True)
    summary = run_pipeline(cfg)
    return run_dir, cfg, summary


@pytest.fixture
def coco_tiny():
    if not COCO_TINY.exists():
        pytest.skip("../shared/data/coco_tiny is absent")
    return COCO_TINY
