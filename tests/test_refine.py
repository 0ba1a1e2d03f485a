"""Refinement: the torch dense CRF, confident labels, the sparse random walk against the dense
IRN formulation, the affinity loss, and the pseudo-mask stage on the quick demo run."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from wsss_ray.refine.crf import CRFParams, crf_inference_label, crf_inference_probs, dense_crf, unary_from_labels
from wsss_ray.refine.irn import (BoundaryNet, affinity_loss, conf_thresholds, confident_labels, displacement_loss,
                                 irn_loss, pair_labels, rw_pseudo_mask, threshold_labels)
from wsss_ray.refine.random_walk import (affinity_field, full_offsets, half_offsets, propagate, random_walk,
                                         random_walk_dense, transition_dense, transition_sparse)


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: torch's thread pool only adds contention at these sizes
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def two_regions(size=32, edge=16, seed=0, noise=4.0):
    """A red left half and a blue right half (with a little noise), and its true labels."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), np.float32)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 60, 200)
    image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((size, size), np.int64)
    truth[:, edge:] = 1
    return image, truth


def iou(pred, truth, label=1):
    return ((pred == label) & (truth == label)).sum() / ((pred == label) | (truth == label)).sum()


# ------------------------------------------------------------------ CRF


def test_crf_snaps_a_shifted_label_map_to_the_colour_edge():
    image, truth = two_regions()
    shifted = np.zeros_like(truth)
    shifted[:, 11:] = 1                                       # boundary 5 px too far left
    out = crf_inference_label(image, shifted, 2)
    assert iou(shifted, truth) < 0.8
    assert iou(out, truth) > 0.95 and iou(1 - out, 1 - truth) > 0.95


def test_crf_sharpens_a_blurred_probability_map():
    image, truth = two_regions(seed=1)
    # a soft ramp over 16 px centred 3 px off the true edge
    x = np.arange(32, dtype=np.float32)
    p1 = np.clip((x - 13 + 8) / 16, 0.02, 0.98)[None].repeat(32, 0)
    probs = np.stack([1 - p1, p1])
    before = probs.argmax(0)
    after = crf_inference_probs(image, probs).argmax(0)
    assert iou(after, truth) > iou(before, truth)
    assert iou(after, truth) > 0.95


def test_crf_strided_sources_agree_with_exact_on_the_toy():
    image, truth = two_regions(size=48, edge=20, seed=2)
    shifted = np.zeros_like(truth)
    shifted[:, 14:] = 1
    exact = dense_crf(image, unary_from_labels(torch.from_numpy(shifted), 2), CRFParams(max_sources=48 * 48))
    approx = dense_crf(image, unary_from_labels(torch.from_numpy(shifted), 2), CRFParams(max_sources=150))
    assert (exact.argmax(0) == approx.argmax(0)).float().mean() > 0.99
    assert iou(approx.argmax(0).numpy(), truth) > 0.95


def test_unary_from_labels_is_minus_log_gt_prob():
    u = unary_from_labels(torch.tensor([[0, 2]]), 3, gt_prob=0.7)
    assert torch.allclose(torch.exp(-u).sum(0), torch.ones(1, 2))
    assert torch.exp(-u)[0, 0, 0].item() == pytest.approx(0.7)
    assert torch.exp(-u)[1, 0, 0].item() == pytest.approx(0.15)


# ------------------------------------------------------------------ confident labels


def test_conf_presets_follow_methods_md():
    assert conf_thresholds("cam") == (0.30, 0.05)
    assert conf_thresholds("recam") == (0.35, 0.10)
    assert conf_thresholds("lpcam") == (0.45, 0.25)
    assert conf_thresholds("recam_wprod") == (0.35, 0.10)
    assert conf_thresholds("lpcam_f") == (0.45, 0.25)


def test_confident_labels_fg_bg_and_ignore():
    """Three colour bands with map values below conf_bg, between, and above conf_fg: the
    CRF-ed seeds make them background, ignore and foreground (label = class id + 1)."""
    rng = np.random.default_rng(0)
    image = np.zeros((24, 36, 3), np.float32)
    image[:, :12], image[:, 12:24], image[:, 24:] = (200, 40, 40), (40, 200, 40), (40, 60, 200)
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    cam = np.zeros((1, 24, 36), np.float32)
    cam[0, :, :12], cam[0, :, 12:24], cam[0, :, 24:] = 0.02, 0.2, 0.9
    cam[0, :, 22:26] = 0.5                                   # a blurred edge the CRF has to settle
    labels = confident_labels(image, cam, [3], conf_fg=0.6, conf_bg=0.05)
    assert (labels[:, :12] == 0).all()
    assert (labels[:, 12:24] == 255).all()
    assert (labels[:, 24:] == 4).all()
    assert threshold_labels(cam, 0.5)[0, 0] == 0 and threshold_labels(cam, 0.5)[0, -1] == 1


# ------------------------------------------------------------------ random walk


def _walk_inputs(h=12, w=14, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    boundary = torch.rand(h, w, generator=g, dtype=dtype) * 0.3
    boundary[:, w // 2] = 0.95                            # a wall down the middle
    cams = torch.rand(2, h, w, generator=g, dtype=dtype)
    return cams, boundary


def test_affinity_field_is_symmetric_and_local():
    _, boundary = _walk_inputs()
    offsets, field = affinity_field(boundary, 4)
    t = transition_dense(field, offsets, 1.0)
    assert len(offsets) == 1 + 2 * len(half_offsets(4)) == len(full_offsets(4))
    assert torch.allclose(t.sum(0), torch.ones(t.shape[0], dtype=t.dtype))   # columns normalised
    support = t > 0
    assert torch.equal(support, support.T)                 # a_ij = a_ji
    ys, xs = torch.meshgrid(torch.arange(12), torch.arange(14), indexing="ij")
    p = torch.stack([ys.flatten(), xs.flatten()], 1).double()
    assert not support[torch.cdist(p, p) >= 4].any()       # nothing beyond the radius


def test_sparse_walk_matches_dense_squaring():
    """2^8 sparse steps vs the dense matrix squared 8 times (the same radius): float64 max abs
    diff < 1e-10, float32 < 1e-4."""
    cams, boundary = _walk_inputs()
    sparse = propagate(cams, boundary, radius=5, beta=10, exp_times=8)
    dense = propagate(cams, boundary, radius=5, beta=10, exp_times=8, dense=True)
    assert (sparse - dense).abs().max() < 1e-10
    sparse32 = propagate(cams.float(), boundary.float())
    dense32 = propagate(cams.float(), boundary.float(), dense=True)
    assert (sparse32 - dense32).abs().max() < 1e-4


def test_walk_does_not_cross_a_boundary_wall():
    h, w = 10, 12
    boundary = torch.zeros(h, w, dtype=torch.float64)
    boundary[:, 6] = 1.0
    seeds = torch.zeros(1, h, w, dtype=torch.float64)
    seeds[0, 4, 1] = 1.0
    offsets, field = affinity_field(boundary, 5)
    out = random_walk(seeds, field, offsets, beta=10, exp_times=6)
    assert out[0, :, 7:].abs().max() < 1e-12 < out[0, :, :6].min()
    ref = random_walk_dense(seeds, field, offsets, beta=10, exp_times=6)
    assert torch.allclose(out, ref, atol=1e-12)


def test_transition_sparse_is_the_transpose_of_dense():
    _, boundary = _walk_inputs(6, 7)
    offsets, field = affinity_field(boundary, 3)
    assert torch.allclose(transition_sparse(field, offsets, 10.0).to_dense(), transition_dense(field, offsets, 10.0).T)


def test_rw_pseudo_mask_labels_and_size():
    maps = torch.zeros(1, 8, 8)
    maps[0, 3:5, 3:5] = 1.0
    boundary = torch.zeros(8, 8)
    boundary[1, 1:7] = boundary[6, 1:7] = boundary[1:7, 1] = boundary[1:7, 6] = 1.0   # a closed ring
    mask = rw_pseudo_mask(maps, boundary, [2], 30, 31)
    assert mask.shape == (30, 31) and set(np.unique(mask)) == {0, 3}
    assert mask[15, 15] == 3 and mask[0, 0] == 0


# ------------------------------------------------------------------ affinity loss


def test_pair_labels_and_affinity_loss_gradient():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 1]]])
    fg, bg, neg = pair_labels(labels, [(0, 1)])
    assert fg[0, 0].tolist() == [[False, False, True, False], [False, False, True, False]]
    assert bg[0, 0].tolist() == [[True, False, False, False], [False, False, False, False]]
    assert neg[0, 0].tolist() == [[False, True, False, False], [False, False, False, False]]
    logits = torch.zeros(1, 1, 2, 4, requires_grad=True)
    loss, parts = affinity_loss(logits, labels, radius=2)
    loss.backward()
    assert loss.item() > 0 and set(parts) == {"fg_pos", "bg_pos", "neg"}
    # the boundary between the two labels (columns 1-2) is pushed up, inside a region down
    assert logits.grad[0, 0, 0, 1] < 0 or logits.grad[0, 0, 0, 2] < 0
    assert logits.grad[0, 0, 1, 3] > 0


def test_displacement_loss_by_hand_on_one_row():
    """Cells (0,0), (0,1) are one object, (0,2) background; radius 2 leaves one in-row offset,
    (0, 1). A zero field misses that pair's target D(p) - D(p + o) = (0, 1) by 1 in L1, and
    there is no background pair: loss = (1 + 0) / 2."""
    labels = torch.tensor([[[1, 1, 0]]])
    loss, parts = displacement_loss(torch.zeros(1, 2, 1, 3), labels, radius=2)
    assert parts["dp_fg"] == pytest.approx(1.0, rel=1e-4) and parts["dp_bg"] == 0.0  # (the means carry +1e-5)
    assert loss.item() == pytest.approx(0.5, rel=1e-4)


def test_displacement_loss_is_zero_for_the_centroid_field_only():
    """D = centroid - position inside each object and 0 on the background: no loss at all."""
    labels = torch.zeros(1, 8, 9, dtype=torch.long)
    labels[0, 1:4, 1:5] = 1
    labels[0, 5:8, 4:9] = 2
    labels[0, 0, 8] = 255
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(9.0), indexing="ij")
    field = torch.zeros(1, 2, 8, 9)
    for k in (1, 2):
        inside = labels[0] == k
        field[0, 0][inside] = ys[inside].mean() - ys[inside]
        field[0, 1][inside] = xs[inside].mean() - xs[inside]
    loss, parts = displacement_loss(field, labels, radius=4)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    wrong = field.clone().requires_grad_(True)
    with torch.no_grad():
        wrong[0, :, 2, 2] += 1.0                       # one cell points elsewhere
    loss, parts = displacement_loss(wrong, labels, radius=4)
    loss.backward()
    assert parts["dp_fg"] > 0 and wrong.grad[0, :, 2, 2].abs().sum() > 0


def test_irn_net_trains_both_branches_in_one_forward():
    from wsss_ray.models.backbones import build_backbone
    torch.manual_seed(0)
    net = BoundaryNet(build_backbone("tiny", "none"), stride=2)
    boundary, displacement = net(torch.rand(2, 3, 32, 32), with_displacement=True)
    assert boundary.shape == (2, 1, 16, 16) and displacement.shape == (2, 2, 16, 16)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 4:10, 4:12] = 1
    loss, parts = irn_loss(boundary, displacement, labels, radius=3)
    loss.backward()
    assert {"fg_pos", "bg_pos", "neg", "dp_fg", "dp_bg"} == set(parts)
    assert net.displace[0].weight.grad.abs().sum() > 0 and net.fuse[0].weight.grad.abs().sum() > 0
    assert any(k.startswith("displace.") for k in net.head_state())
    # the branches share only the frozen backbone: the displacement loss leaves the boundary be
    net.zero_grad()
    boundary, displacement = net(torch.rand(2, 3, 32, 32), with_displacement=True)
    displacement_loss(displacement, labels, radius=3)[0].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in [*net.fuse.parameters(), *net.reduce.parameters()])


def test_boundary_net_shapes_and_frozen_backbone():
    from wsss_ray.models.backbones import build_backbone
    torch.manual_seed(0)
    net = BoundaryNet(build_backbone("tiny", "none"))
    out = net(torch.zeros(2, 3, 50, 45))
    assert out.shape == (2, 1, 13, 12)
    assert BoundaryNet(build_backbone("tiny", "none"), stride=2)(torch.zeros(1, 3, 50, 45)).shape == (1, 1, 25, 23)
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert not any(k.startswith("backbone.") for k in net.head_state())


# ------------------------------------------------------------------ scoring a label mask


def test_mask_confusion_counts_a_label_mask():
    from wsss_ray.stages.refine import decode_png, encode_png, mask_confusion
    gt = np.array([[0, 0, 2, 2], [0, 255, 2, 2]], np.uint8)            # class id 1 -> label 2
    pred = np.array([[0, 2, 2, 2], [255, 0, 3, 2]], np.uint8)
    conf = mask_confusion(pred, gt, num_classes=3)
    assert conf.shape == (4, 4) and conf.sum() == 6                    # GT 255 and pred 255 left out
    assert conf[0, 0] == 1 and conf[0, 2] == 1 and conf[2, 2] == 3 and conf[2, 3] == 1
    assert np.array_equal(decode_png(encode_png(pred)), pred)


# ------------------------------------------------------------------ the stage on the quick demo run


@pytest.mark.slow
def test_pseudo_mask_stage_on_quick_run(quick_run, tmp_path):
    """IRN route on 4 demo images: confident labels, a 1-epoch boundary head on Ray Train
    (2 workers), the sparse walk; masks readable as PNG; eval json in the seed format."""
    from wsss_ray.stages.refine import REFINE_PRESETS, decode_png, make_pseudo_masks
    run_dir, _, _ = quick_run
    run = tmp_path / "run"
    for sub in ("manifest", "checkpoints/cam", "maps/cam", "eval"):
        shutil.copytree(Path(run_dir, sub), run / sub, ignore=shutil.ignore_patterns("epochs"))
    cfg = dataclasses.replace(REFINE_PRESETS["quick"], limit=4, chunk_size=2, epochs=1, crf_max_sources=256)
    info = make_pseudo_masks(str(run), "cam", cfg)
    table = pq.read_table(str(run / "masks" / "cam"))
    assert table.num_rows == 4 and len(list((run / "masks" / "cam").glob("part-*.parquet"))) == 2
    row = table.slice(0, 1).to_pylist()[0]
    mask = decode_png(row["png"])
    assert mask.shape == (row["height"], row["width"]) == (112, 112)
    res = json.loads((run / "eval" / "pseudo_cam.json").read_text())
    seed = json.loads((run / "eval" / "cam.json").read_text())
    assert set(seed) <= set(res) and res["num_images"] == 4 and res["thresholds"] == [0.5]
    assert 0 < res["best"]["miou"] <= 1 and len(res["best"]["per_class_iou"]) == 6
    assert (run / "checkpoints" / "irn_cam" / "model.pt").exists()
    assert info["pseudo_miou"] == pytest.approx(res["best"]["miou"]) and 0 < info["seed_miou_subset"] <= 1


@pytest.mark.slow
def test_main_job_runs_through_to_segmentation(quick_run, tmp_path):
    """``--segment cam`` on a finished quick run: seeds are found and skipped, then pseudo
    masks (the quick preset's CRF route), segmentation training and its evaluation; one
    table of seed / pseudo / seg mIoU."""
    from wsss_ray.stages.pipeline import run_pipeline
    run_dir, cfg, _ = quick_run
    run = tmp_path / "run"
    for sub in ("manifest", "checkpoints/cam", "maps/cam", "eval"):
        shutil.copytree(Path(run_dir, sub), run / sub)
    summary = run_pipeline(dataclasses.replace(cfg, run_dir=str(run), methods=("cam",), segment=("cam",)))
    row = summary["segmentation"]["cam_crf"]
    assert summary["timings_s"]["train_cam"] < 5                     # skipped: the checkpoint was there
    assert row["preset"] == "quick" and row["refiner"] == "crf" and row["seed"] == summary["results"]["cam"]["miou"]
    pseudo = json.loads((run / "eval" / "pseudo_cam_crf.json").read_text())["best"]["miou"]
    seg = json.loads((run / "eval" / "seg_cam_crf.json").read_text())["best"]["miou"]
    assert row["pseudo_mask"] == pytest.approx(pseudo) and row["segmentation"] == pytest.approx(seg)
    assert 0 < pseudo <= 1 and 0 < seg <= 1
    assert "| cam_crf |" in (run / "eval" / "segmentation.md").read_text()
    with pytest.raises(ValueError, match="not among --methods"):
        run_pipeline(dataclasses.replace(cfg, run_dir=str(run), methods=("cam",), segment=("lpcam",)))
