"""The pure-torch API (``wsss_ray.api``): no Ray imported, the same maps as the extraction
stage's stored shards, LPCAM fitted in process."""
from __future__ import annotations

import json
from dataclasses import asdict
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from wsss_ray.data.images import load_rgb
from wsss_ray.data.manifest import read_manifest
from wsss_ray.store import decode_maps, encode_maps

NO_RAY = """
import json, sys
import numpy as np
from wsss_ray import load_run, CAM, LPCAM
from wsss_ray.data.images import load_rgb
from wsss_ray.data.manifest import read_manifest
run = load_run(sys.argv[1])
manifest, _ = read_manifest(sys.argv[1] + "/manifest")
rows = [r for r in manifest.to_pylist() if r["labels"]][:3]
images, labels = [load_rgb(r["uri"]) for r in rows], [r["labels"] for r in rows]
maps = CAM(run.model)(images, labels) + LPCAM(run.model, run.prototypes)(images, labels)
print(json.dumps({"ray": "ray" in sys.modules, "shapes": [list(m.shape) for m in maps]}))
"""


def first_images(run_dir: str, count: int):
    """The first labelled manifest rows, their decoded images and labels."""
    manifest, _ = read_manifest(str(Path(run_dir, "manifest")))
    rows = sorted((r for r in manifest.to_pylist() if r["labels"]), key=lambda r: r["image_id"])[:count]
    return rows, [load_rgb(r["uri"]) for r in rows], [list(r["labels"]) for r in rows]


def stored_maps(run_dir: str, method: str) -> dict[int, np.ndarray]:
    return {r["image_id"]: decode_maps(r["data"], r["map_shape"])
            for r in pq.read_table(Path(run_dir, "maps", method)).to_pylist()}


def test_api_imports_and_runs_without_ray(quick_run):
    run_dir, _, _ = quick_run
    out = subprocess.run([sys.executable, "-c", NO_RAY, run_dir], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ray"] is False
    assert len(result["shapes"]) == 6


def api_method(name: str, run, cfg):
    from wsss_ray import CAM, LPCAM, AdvCAM, InferCam, ReCAM
    stride = {"stride": cfg.cam.store_stride}
    infercam = {k: v for k, v in asdict(cfg.infercam).items() if k not in ("split", "iterate")}
    return {"cam": lambda: CAM(run.model, **stride),
            "recam": lambda: ReCAM(run, **stride),
            "lpcam": lambda: LPCAM(run.model, run.prototypes, **stride),
            "lpcam_f": lambda: LPCAM(run.model, run.prototypes, fg_only=True, **stride),
            # the stored infercam splits around the CAM pass's stored centres: compare the unsplit one
            "infercam_iter": lambda: InferCam(run.model, **infercam, split=False, iterate=True, **stride),
            "advcam": lambda: AdvCAM(run.model, **asdict(cfg.advcam), **stride)}[name]()


@pytest.mark.parametrize("method", ["cam", "recam", "lpcam", "lpcam_f", "infercam_iter", "advcam"])
def test_api_maps_equal_the_stage_maps(quick_run, method):
    """At the run's store stride, rounded to the stored uint8 levels as the stage rounds them."""
    from wsss_ray import load_run
    run_dir, cfg, _ = quick_run
    run = load_run(run_dir)
    rows, images, labels = first_images(run_dir, 12)
    maps = api_method(method, run, cfg)(images, labels)
    stored = stored_maps(run_dir, method)
    for row, m, lab in zip(rows, maps, labels):
        want = stored[row["image_id"]]
        assert m.dtype == np.float32 and m.shape == want.shape and len(m) == len(lab)
        got = decode_maps(encode_maps(m), m.shape)
        assert float(np.abs(got - want).max()) <= 1 / 255 + 1e-6


def test_api_full_resolution_and_raw_maps(quick_run):
    from wsss_ray import CAM, load_run
    run_dir, _, _ = quick_run
    run = load_run(run_dir)
    _, images, labels = first_images(run_dir, 3)
    normalised = CAM(run.model)(images, labels)
    raw = CAM(run.model, normalise=False)(images, labels)
    for im, n, r, lab in zip(images, normalised, raw, labels):
        assert n.shape == r.shape == (len(lab), *im.shape[:2])
        assert 0.0 <= n.min() and n.max() <= 1.0
        assert r.max() > 1.0           # the sum over 4 scales and 2 flips, before the max-norm
        peak = r.reshape(len(lab), -1).max(1)[:, None, None]
        np.testing.assert_allclose(n, r / (peak + 1e-5), rtol=1e-5, atol=1e-6)


def test_lpcam_fit_gives_prototypes_and_maps(quick_run):
    from wsss_ray import LPCAM, load_run
    run_dir, _, _ = quick_run
    run = load_run(run_dir)
    _, images, labels = first_images(run_dir, 8)
    lp = LPCAM.fit(run.model, images, labels, tau=0.1, k=4)
    seen = {c for lab in labels for c in lab}
    assert lp.prototypes and {p["class_id"] for p in lp.prototypes} <= seen
    assert all(p["kind"] in ("fg", "context") for p in lp.prototypes)
    # every class that has an image gets a foreground prototype (the arg-max fallback at worst)
    assert {p["class_id"] for p in lp.prototypes if p["kind"] == "fg"} == seen
    maps = lp(images, labels)
    for im, m, lab in zip(images, maps, labels):
        assert m.shape == (len(lab), *im.shape[:2])
        assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0


# ----------------------------------------------------------------------------- without a run

@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from wsss_ray.api import Model
    from wsss_ray.models.classifier import build_classifier
    torch.manual_seed(0)
    return Model(build_classifier("tiny", "none", 3), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), batch_size=2)


def _random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_batched_call_equals_one_image_at_a_time(tiny_model):
    from wsss_ray import CAM
    images = _random_images([(40, 48), (32, 32), (40, 48), (40, 48)])
    labels = [[0, 2], [1], [2], []]
    method = CAM(tiny_model, stride=4)
    together = method(images, labels)
    for im, lab, m in zip(images, labels, together):
        (alone,) = method([im], [lab])
        assert m.shape == (len(lab), -(-im.shape[0] // 4), -(-im.shape[1] // 4))
        np.testing.assert_allclose(m, alone, atol=1e-5)


def test_bad_inputs_and_unknown_settings_are_refused(tiny_model):
    from wsss_ray import CAM, AdvCAM, InferCam, LPCAM
    images = _random_images([(16, 16)])
    with pytest.raises(ValueError, match="outside"):
        CAM(tiny_model)(images, [[3]])
    with pytest.raises(ValueError, match="uint8"):
        CAM(tiny_model)([images[0].astype(np.float32)], [[0]])
    with pytest.raises(ValueError, match="label lists"):
        CAM(tiny_model)(images, [[0], [1]])
    with pytest.raises(TypeError, match="stpes"):
        AdvCAM(tiny_model, stpes=2)
    with pytest.raises(ValueError, match="raw"):
        InferCam(tiny_model, normalise=False)
    with pytest.raises(TypeError):
        LPCAM.fit(tiny_model, images, [[0]], tua=0.1)


def test_max_side_maps_come_back_on_the_input_grid(tiny_model):
    import dataclasses
    from wsss_ray import CAM
    small = dataclasses.replace(tiny_model, max_side=32)
    (m,) = CAM(small, stride=4)(_random_images([(64, 48)]), [[1]])
    assert m.shape == (1, 16, 12) and np.isfinite(m).all()
