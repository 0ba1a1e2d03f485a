"""The one training engine (stages/engine.py): seeded per-rank plans, batch makers that are
functions of their plan row, and, for each of the three networks it trains (classifier, IRN
boundary head, segmentation net), a rerun after an interrupted fit that ends with the same
weights as the fit it interrupted."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from wsss_ray.stages.engine import epoch_plan, epoch_schedule, rank_indices


def _items(n: int) -> list[dict]:
    return [{"image_id": 100 + i, "uri": f"img{i}.png"} for i in range(n)]


def test_rank_orders_cover_every_image_each_epoch_and_change_between_epochs():
    n, world = 11, 3
    for epoch in range(3):
        orders = [rank_indices(n, epoch, 7, r, world) for r in range(world)]
        assert len({len(o) for o in orders}) == 1                     # equal steps on every rank (DDP)
        assert set(np.concatenate(orders)) == set(range(n))
    assert not np.array_equal(rank_indices(n, 0, 7, 0, world), rank_indices(n, 1, 7, 0, world))
    assert np.array_equal(rank_indices(n, 1, 7, 2, world), rank_indices(n, 1, 7, 2, world))


def test_a_resumed_plan_is_the_tail_of_the_full_plan():
    items = _items(10)
    schedule = epoch_schedule(len(items), batch_size=4, world=2, epochs=3)
    for rank in range(2):
        full = epoch_plan(items, schedule, 0, rank, 2, 0)
        resumed = epoch_plan(items, schedule, 0, rank, 2, 2)
        assert resumed == [row for row in full if row["epoch"] >= 2]
        assert len(full) == schedule.epochs * schedule.steps_per_epoch
        # 5 images a rank in steps of 2: the last step of each epoch holds the odd one
        assert [len(row["index"]) for row in full if row["epoch"] == 0] == [2, 2, 1]
        assert [row["image_id"] for row in full[:1]] == [[items[i]["image_id"] for i in full[0]["index"]]]


def test_the_classifier_batch_is_a_function_of_its_plan_row(quick_run):
    from wsss_ray.data.train_batches import ClassifierBatches
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.train import training_rows
    run_dir, cfg, _ = quick_run
    rows, num_classes = training_rows(RunDir(run_dir))
    t, m = cfg.train, cfg.model
    make = ClassifierBatches(num_classes, t.resize_long, t.crop_size, t.hflip, m.image_mean, m.image_std, t.seed)
    row = {"epoch": 1, "step": 0, "index": [0, 3], "uri": [rows[0]["uri"], rows[3]["uri"]],
           "labels": [rows[0]["labels"], rows[3]["labels"]]}
    a, b = make(row), make(dict(row))
    assert a["x"].shape == (2, 3, t.crop_size, t.crop_size) and a["x"].dtype == np.float32
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["y"], b["y"])
    assert a["y"][0, rows[0]["labels"]].tolist() == [1.0] * len(rows[0]["labels"]) and a["y"][0].sum() == len(rows[0]["labels"])
    # the draws are the image's own (seed, epoch, index): another batch mate does not change them
    alone = make({**row, "index": [0], "uri": [rows[0]["uri"]], "labels": [rows[0]["labels"]]})
    assert np.array_equal(alone["x"][0], a["x"][0])
    assert not np.array_equal(make({**row, "epoch": 2})["x"], a["x"])       # a new epoch, new draws


# ------------------------------------------------------------------ rerun after an interrupt


def _finished_state(run: Path, name: str) -> dict:
    return torch.load(run / "checkpoints" / name / "model.pt", map_location="cpu", weights_only=True)


def _interrupt_after_first_epoch(run: Path, name: str) -> None:
    """What a job killed during epoch 1 leaves: epoch-000 complete, no later epoch, no
    finished model, no Ray Train state to restore from (the rerun starts a new Ray Train run)."""
    ckpt = run / "checkpoints" / name
    for path in [ckpt / "model.pt", ckpt / "model.json"]:
        path.unlink()
    for epoch_dir in sorted((ckpt / "epochs").iterdir())[1:]:
        shutil.rmtree(epoch_dir)
    shutil.rmtree(run / "ray_train" / name, ignore_errors=True)


def _assert_rerun_reproduces(run: Path, name: str, train) -> dict:
    first = train()
    assert first["skipped"] is False
    state = _finished_state(run, name)
    _interrupt_after_first_epoch(run, name)
    again = train()
    assert again["skipped"] is False and again["epoch"] == first["epoch"]
    resumed = _finished_state(run, name)
    assert state.keys() == resumed.keys()
    for key in state:
        assert torch.allclose(state[key].float(), resumed[key].float(), atol=1e-6), key
    assert train()["skipped"] is True                                      # a finished model is kept
    return first


def _run_with_gt_masks(quick_run, tmp_path: Path, n: int) -> Path:
    """quick_run's manifest and CAM checkpoint, and its first n images' GT as a label-mask set."""
    from wsss_ray.data.images import load_mask
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.stages.refine import MASKS_SCHEMA, mask_row
    from wsss_ray.store import open_fs, write_table_atomic
    run_dir, _, _ = quick_run
    run = tmp_path / "run"
    shutil.copytree(Path(run_dir, "manifest"), run / "manifest")
    shutil.copytree(Path(run_dir, "checkpoints", "cam"), run / "checkpoints" / "cam",
                    ignore=shutil.ignore_patterns("epochs"))
    manifest, _ = read_manifest(str(run / "manifest"))
    rows = sorted((r for r in manifest.to_pylist() if r["labels"]), key=lambda r: r["image_id"])[:n]
    fs, path = open_fs(str(run / "masks" / "gt"))
    write_table_atomic(pa.Table.from_pylist([mask_row(r["image_id"], load_mask(r["mask_uri"])) for r in rows],
                                            schema=MASKS_SCHEMA), fs, f"{path}/part-00000.parquet")
    return run


@pytest.mark.slow
def test_classifier_rerun_after_an_interrupt_ends_with_the_same_weights(quick_run, tmp_path):
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.train import train_classifier
    run_dir, cfg, _ = quick_run
    run = tmp_path / "run"
    shutil.copytree(Path(run_dir, "manifest"), run / "manifest")
    train = dataclasses.replace(cfg.train, epochs=2)
    out = _assert_rerun_reproduces(run, "cls", lambda: train_classifier(RunDir(str(run)), "cls", cfg.model, train))
    assert 0 <= out["data_wait_share"] <= 1 and out["images_per_second"] > 0


@pytest.mark.slow
def test_boundary_net_rerun_after_an_interrupt_ends_with_the_same_weights(quick_run, tmp_path):
    from wsss_ray.models.checkpoint import load_classifier
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.engine import fit
    from wsss_ray.stages.refine import REFINE_PRESETS, BoundaryTask
    run = _run_with_gt_masks(quick_run, tmp_path, 8)
    cfg = dataclasses.replace(REFINE_PRESETS["quick"], limit=8, epochs=2, batch_size=4)
    classifier = str(run / "checkpoints" / "cam")
    _, model_cfg, _ = load_classifier(classifier)
    task = BoundaryTask("irn_gt", cfg, classifier, model_cfg, str(run / "masks" / "gt"))
    _assert_rerun_reproduces(run, "irn_gt", lambda: fit(RunDir(str(run)), task))


@pytest.mark.slow
def test_segmentation_rerun_after_an_interrupt_ends_with_the_same_weights(quick_run, tmp_path):
    from wsss_ray.models.segmentation import SEG_PRESETS
    from wsss_ray.stages.segment import train_segmentation
    run = _run_with_gt_masks(quick_run, tmp_path, 6)
    # 6 images, global batch 4 on 2 workers: 2 steps an epoch, so 4 iterations are 2 epochs
    cfg = dataclasses.replace(SEG_PRESETS["quick"], iterations=4, batch_size=4, crop_size=48, num_workers=2)
    out = _assert_rerun_reproduces(run, "seg_gt", lambda: train_segmentation(str(run), "gt", cfg))
    assert out["steps_done"] == 4
