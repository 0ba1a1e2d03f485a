"""End-to-end checks on the --quick demo flow (run once per session by the quick_run fixture)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from wsss_ray.config import DatasetConfig
from wsss_ray.data.manifest import read_manifest
from wsss_ray.rundir import RunDir

pytestmark = pytest.mark.slow


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("part-*.parquet"))}


def test_eval_json_has_the_contract(quick_run):
    run_dir, cfg, _ = quick_run
    for method in ("cam", "lpcam", "lpcam_f", "recam", "recam_w", "recam_wp", "recam_wsum",
                   "infercam", "infercam_split", "infercam_iter", "advcam", "recam_advcam"):
        res = json.loads(Path(run_dir, "eval", f"{method}.json").read_text())
        assert res["dataset"] == "demo" and res["num_images"] == 96, method
        assert len(res["thresholds"]) == len(res["miou"]) == len(cfg.eval.thresholds)
        best = res["best"]
        for key in ("threshold", "miou", "precision", "recall", "fp", "fn", "per_class_iou"):
            assert key in best, (method, key)
        assert best["miou"] == pytest.approx(max(res["miou"]))
        assert 0.0 < best["miou"] <= 1.0
        assert len(best["per_class_iou"]) == 6          # background + 5 demo classes
    assert Path(run_dir, "eval", "cam.png").stat().st_size > 1000
    summary = Path(run_dir, "eval", "summary.md").read_text()
    assert "| lpcam |" in summary and "| advcam |" in summary and "| recam_advcam |" in summary


def test_map_shards_read_with_plain_pyarrow(quick_run):
    run_dir, _, _ = quick_run
    manifest, _ = read_manifest(str(Path(run_dir, "manifest")))
    table = pq.read_table(str(Path(run_dir, "maps", "cam")))
    ids = table.column("image_id").to_pylist()
    assert sorted(ids) == sorted(manifest.column("image_id").to_pylist())      # every image exactly once
    row = table.slice(0, 1).to_pylist()[0]
    maps = np.frombuffer(row["data"], np.uint8).reshape(row["map_shape"]) / 255.0
    assert maps.shape == (len(row["classes"]), 28, 28)                       # 112 px at stride 4
    assert np.allclose(maps.reshape(len(row["classes"]), -1).max(1), 1.0, atol=1 / 255)


def test_rerun_computes_nothing(quick_run):
    from wsss_ray.stages.extract import extract_maps
    run_dir, cfg, _ = quick_run
    before = shard_bytes(Path(run_dir, "maps", "cam"))
    out = extract_maps(RunDir(run_dir), "cam", "cam", str(Path(run_dir, "checkpoints", "cam")), cfg.cam)
    assert out["chunks_run"] == 0
    assert shard_bytes(Path(run_dir, "maps", "cam")) == before


def test_interrupted_extraction_resumes_byte_identical(quick_run):
    """Simulate a crash: one shard missing, a half-written temporary left behind."""
    from wsss_ray.stages.extract import extract_maps
    run_dir, cfg, _ = quick_run
    maps_dir = Path(run_dir, "maps", "cam")
    work = Path(run_dir, "maps", "cam_resume")
    shutil.copytree(maps_dir, work)
    uninterrupted = shard_bytes(maps_dir)
    victim = sorted(work.glob("part-*.parquet"))[1]
    victim.unlink()
    (work / "_tmp.999.part-00001.parquet").write_bytes(b"PAR1 half a shard")
    out = extract_maps(RunDir(run_dir), "cam_resume", "cam", str(Path(run_dir, "checkpoints", "cam")), cfg.cam)
    assert out["chunks_run"] == 1 and out["images"] == 32
    assert shard_bytes(work) == uninterrupted
    table = pq.read_table(str(work))                  # readers ignore the stale temporary
    assert table.num_rows == len(set(table.column("image_id").to_pylist())) == 96


def test_lpcam_features_sampled_once_per_image_and_class(quick_run):
    run_dir, _, _ = quick_run
    manifest, _ = read_manifest(str(Path(run_dir, "manifest")))
    index = pq.read_table(str(Path(run_dir, "features", "index"))).to_pylist()
    pairs = [(r["image_id"], r["class_id"]) for r in index]
    assert len(pairs) == len(set(pairs))
    expected = {(i, c) for i, labels in zip(manifest.column("image_id").to_pylist(),
                                            manifest.column("labels").to_pylist()) for c in labels}
    assert set(pairs) == expected                       # the demo preset samples every image
    protos = json.loads(Path(run_dir, "prototypes", "lpcam.json").read_text())
    assert protos["classes_without_prototypes"] == []


def test_features_sampled_in_the_cam_pass_equal_the_stand_alone_stage(quick_run, tmp_path):
    """The CAM pass sampled the features (the stand-alone stage then had nothing left to do);
    the stand-alone stage over the same CAM shards writes the same shards, row for row."""
    from wsss_ray.stages.prototypes import sample_features
    run_dir, cfg, summary = quick_run
    assert summary["timings_s"]["lpcam_features_in_cam_pass"] > 0
    again = sample_features(RunDir(run_dir), str(Path(run_dir, "checkpoints", "cam")), cfg.lpcam, cfg.cam)
    assert again["chunks_run"] == 0
    copy = tmp_path / "run"
    for part in ("manifest", "checkpoints/cam", "maps/cam"):
        shutil.copytree(Path(run_dir, part), copy / part)
    alone = sample_features(RunDir(str(copy)), str(copy / "checkpoints" / "cam"), cfg.lpcam, cfg.cam)
    assert alone["chunks_run"] == 3 and alone["images"] == 96
    fused_files = sorted(p.relative_to(Path(run_dir, "features")) for p in Path(run_dir, "features").rglob("*.parquet"))
    alone_files = sorted(p.relative_to(copy / "features") for p in (copy / "features").rglob("*.parquet"))
    assert fused_files == alone_files and len(fused_files) > 3
    for rel in fused_files:
        fused, other = pq.read_table(Path(run_dir, "features", rel)), pq.read_table(copy / "features" / rel)
        assert fused.column("image_id").to_pylist() == other.column("image_id").to_pylist(), rel
        if "feature" in fused.column_names:
            a = fused.column("feature").combine_chunks().flatten().to_numpy()
            b = other.column("feature").combine_chunks().flatten().to_numpy()
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=str(rel))


def test_bad_images_become_error_rows_and_the_rest_completes(quick_run, tmp_path):
    from wsss_ray.stages.extract import extract_maps
    from wsss_ray.stages.manifest import build_manifest
    run_dir, cfg, _ = quick_run
    src = Path(run_dir, "demo_world", "images")
    images = tmp_path / "images"
    images.mkdir()
    good = sorted(src.glob("*.png"))[:5]
    for p in good:
        shutil.copy(p, images / p.name)
    Image.open(good[0]).convert("L").save(images / "gray.png")
    Image.open(good[1]).convert("CMYK").save(images / "cmyk.jpg")
    Image.open(good[2]).convert("RGB").save(images / "whole.jpg", quality=95)
    data = (images / "whole.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    lines = ["file,labels"] + [f"{p.name},cat" for p in good] + [
        "gray.png,dog", "cmyk.jpg,boat", "truncated.jpg,cat", "corrupt.jpg,cat", "missing.png,cat",
        "whole.jpg,", "whole.jpg,unicorn"]
    (tmp_path / "tags.csv").write_text("\n".join(lines) + "\n")
    bad_run = RunDir(str(tmp_path / "run"))
    info = build_manifest(bad_run, DatasetConfig(kind="folder", root=str(images), tags_file=str(tmp_path / "tags.csv")))
    manifest_errors = pq.read_table(str(tmp_path / "run" / "errors" / "manifest")).to_pylist()
    named = " ".join(e["item"] + " " + e["reason"] for e in manifest_errors)
    assert "corrupt.jpg" in named and "missing.png" in named
    # the folder's class list must match the checkpoint's: rebuild with the demo names
    from wsss_ray.data.folder import build_folder_manifest
    from wsss_ray.data.manifest import write_manifest
    rows, classes, folder_errors = build_folder_manifest(str(images), str(tmp_path / "tags.csv"),
                                                         class_names=["cat", "dog", "boat", "train", "bird"])
    assert any("unicorn" in e.reason or "unicorn" in e.item for e in folder_errors)   # unknown class named
    write_manifest(rows, classes, bad_run.manifest())
    out = extract_maps(bad_run, "cam", "cam", str(Path(run_dir, "checkpoints", "cam")), cfg.cam)
    errors = pq.read_table(str(tmp_path / "run" / "errors" / "maps_cam")).to_pylist()
    assert any("truncated.jpg" in e["item"] for e in errors)
    done = pq.read_table(str(tmp_path / "run" / "maps" / "cam")).column("image_id").to_pylist()
    assert len(done) == len(rows) - 1 == out["images"]          # everything but the truncated JPEG
    assert info["images"] >= 7
    with pytest.raises(Exception, match="truncated"):
        shutil.rmtree(tmp_path / "run" / "maps")
        extract_maps(bad_run, "cam", "cam", str(Path(run_dir, "checkpoints", "cam")), cfg.cam, strict=True)


def test_rerun_with_other_options_refuses_to_mix_maps(quick_run):
    from wsss_ray.stages.extract import extract_maps
    run_dir, cfg, _ = quick_run
    before = shard_bytes(Path(run_dir, "maps", "cam"))
    with pytest.raises(ValueError, match=r"maps/cam holds maps made with another recipe.*variant"):
        extract_maps(RunDir(run_dir), "cam", "cam", str(Path(run_dir, "checkpoints", "cam")), cfg.cam,
                     {"variant": "w'"})
    assert shard_bytes(Path(run_dir, "maps", "cam")) == before


def test_infercam_split_reads_its_centres_from_the_cam_maps(quick_run, tmp_path):
    """The split variants take the baseline from maps/cam (same checkpoint, weight, scales,
    grid); a CAM of other weights is never taken for it, and a batch whose stored rows do not
    match its labels falls back to inferring the baseline."""
    from wsss_ray.stages.extract import MapProcessor, map_recipe, usable_baseline
    run_dir, cfg, _ = quick_run
    run, ckpt = RunDir(run_dir), str(Path(run_dir, "checkpoints", "cam"))
    recipes = {n: json.loads(Path(run_dir, "maps", n, "_recipe.json").read_text())
               for n in ("infercam", "infercam_split", "infercam_iter")}
    assert recipes["infercam"]["baseline"] == recipes["infercam_split"]["baseline"] == "cam"
    assert "baseline" not in recipes["infercam_iter"]
    split = map_recipe("infercam", ckpt, {"split": True}, "", cfg.cam)
    assert usable_baseline(run, "cam", split) == "cam"
    assert usable_baseline(run, "recam", split) == ""                  # ReCAM checkpoint
    assert usable_baseline(run, "cam", map_recipe("infercam", ckpt, {"variant": "w'"}, "", cfg.cam)) == ""
    with pytest.raises(ValueError, match="takes no baseline"):
        usable_baseline(run, "cam", map_recipe("lpcam", ckpt, {}, "", cfg.cam))

    proc = MapProcessor(ckpt, "infercam", {"split": True}, cfg.cam, str(Path(run_dir, "unused")),
                        baseline_dir=str(Path(run_dir, "maps", "cam")))
    stored = pq.read_table(str(Path(run_dir, "maps", "cam"))).slice(0, 2).to_pylist()
    batch = [{"image_id": r["image_id"], "labels": r["classes"]} for r in stored]
    by_id = {r["image_id"]: r for r in stored}
    got = proc.stored_baselines(batch, by_id, (28, 28))
    assert [tuple(g.shape) for g in got] == [(len(r["classes"]), 28, 28) for r in stored]
    assert torch.equal(got[0], torch.from_numpy(np.frombuffer(stored[0]["data"], np.uint8)
                                                .reshape(stored[0]["map_shape"]) / np.float32(255.0)))
    assert proc.stored_baselines(batch, by_id, (14, 14)) is None             # another grid
    assert proc.stored_baselines([{**batch[0], "labels": [4, 0]}], by_id, (28, 28)) is None
    assert proc.stored_baselines(batch, {stored[0]["image_id"]: stored[0]}, (28, 28)) is None



def test_map_recipe_sees_prototypes_and_resampling(tmp_path):
    """Prototypes selected again (another mu_f or fall-back) keep their file name: the recipe
    holds their digest, so the LPCAM maps of the old ones are never resumed; the resampling
    is part of the recipe too."""
    from wsss_ray.config import CamConfig
    from wsss_ray.stages.extract import map_recipe
    first, second = tmp_path / "a" / "lpcam.parquet", tmp_path / "b" / "lpcam.parquet"
    for path, text in ((first, "one"), (second, "two")):
        path.parent.mkdir()
        path.write_text(text)
    a = map_recipe("lpcam", "ckpt", {}, str(first), CamConfig())
    b = map_recipe("lpcam", "ckpt", {}, str(second), CamConfig())
    assert a["prototypes"] == b["prototypes"] and a["prototypes_sha256"] != b["prototypes_sha256"]
    assert map_recipe("cam", "ckpt", {}, "", CamConfig(resample="torch"))["resample"] == "torch"
    assert map_recipe("cam", "ckpt", {}, "", CamConfig())["prototypes_sha256"] == ""


def test_map_rows_come_from_their_chunk_shard_and_the_rest_from_the_directory(quick_run, tmp_path, monkeypatch):
    from wsss_ray import store
    run_dir, _, _ = quick_run
    cam_dir = Path(run_dir, "maps", "cam")
    shards = sorted(cam_dir.glob("part-*.parquet"))
    ids = [pq.read_table(s).column("image_id").to_pylist() for s in shards[:2]]
    assert store.read_map_rows(str(cam_dir), [ids[0][0], ids[1][0], -1], shards[0].name).keys() == {ids[0][0], ids[1][0]}
    assert store.read_map_rows(str(cam_dir), [ids[1][0]]).keys() == {ids[1][0]}
    (tmp_path / "_recipe.json").write_text("{}")
    assert store.read_map_rows(str(tmp_path), ids[0]) == {}          # no shard written yet

    def no_directory_scan(*args, **kwargs):
        raise AssertionError("the chunk's own shard held every row")
    monkeypatch.setattr(store.pads, "dataset", no_directory_scan)
    rows = store.read_map_rows(str(cam_dir), ids[0], shards[0].name)
    assert sorted(rows) == sorted(ids[0])


def test_small_sets_are_scored_on_the_driver_exactly_as_in_ray_data(quick_run):
    from wsss_ray.stages.evaluate import accumulate_confusions, per_image_counts
    run, thresholds = RunDir(quick_run[0]), quick_run[1].eval.thresholds
    driver, spread = (accumulate_confusions(run, "lpcam", thresholds, local=flag) for flag in (True, False))
    assert driver[1] == spread[1] == 96 and np.array_equal(driver[0], spread[0])
    ids_d, counts_d = per_image_counts(run, "cam", thresholds, local=True)
    ids_s, counts_s = per_image_counts(run, "cam", thresholds, local=False)
    assert np.array_equal(ids_d, ids_s) and np.array_equal(counts_d, counts_s)
    stored = json.loads(Path(quick_run[0], "eval", "lpcam.json").read_text())
    assert stored["num_images"] == 96
