"""Segmentation: the loss (CE with ignore; InferCam's exp(t) - 1 saliency weight), the DeepLab-v2
head, joint augmentation, multi-scale inference, presets, and a 2-worker Ray Train step."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from wsss_ray.data.augment import augment_pair, pad_batch
from wsss_ray.models.segmentation import (SEG_PRESETS, ASPPv2, build_segmenter,
                                          predict_mask, predict_multiscale, segmentation_loss)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ loss


def _sal_bce(logits, saliency):
    """Per-image BCE of the background probability against 1 - saliency, written out by hand."""
    p_bg = torch.softmax(logits, 1)[:, 0]
    target = 1 - saliency
    return -(target * torch.log(p_bg) + (1 - target) * torch.log(1 - p_bg)).flatten(1).mean(1)


def test_saliency_term_is_scaled_by_exp_t_minus_one():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 8)
    labels = torch.zeros(2, 6, 8, dtype=torch.long)
    labels[:, :, 4:] = 2                                    # right half foreground
    labels[1, 0, 0] = 255                                   # an ignored pixel
    agree = (labels > 0).float()                            # saliency = the pseudo label's foreground
    agree[1, 0, 0] = 0.0
    ce = F.cross_entropy(logits, labels, ignore_index=255)

    total, parts = segmentation_loss(logits, labels, agree, alpha=0.08)
    weight = 0.08 * (math.e - 1)                            # t = 1: full agreement
    assert parts["t"] == pytest.approx(1.0)
    assert parts["sal_weight"] == pytest.approx(weight, rel=1e-6)
    assert total.item() == pytest.approx(ce.item() + weight * _sal_bce(logits, agree).mean().item(), rel=1e-5)

    flipped = 1.0 - agree                                   # saliency background = label foreground: t = 0
    total0, parts0 = segmentation_loss(logits, labels, flipped, alpha=0.08)
    assert parts0["t"] == pytest.approx(0.0) and parts0["sal_weight"] == pytest.approx(0.0)
    assert total0.item() == pytest.approx(ce.item(), rel=1e-6)


def test_without_saliency_the_loss_is_cross_entropy_ignoring_255():
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 5, 5, requires_grad=True)
    labels = torch.full((1, 5, 5), 255, dtype=torch.long)
    labels[0, :2] = 3
    loss, parts = segmentation_loss(logits, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, ignore_index=255).item())
    loss.backward()
    assert logits.grad[0, :, 3:].abs().max() == 0          # ignored pixels get no gradient
    empty, _ = segmentation_loss(logits, torch.full((1, 5, 5), 255, dtype=torch.long))
    assert empty.item() == 0.0                              # no NaN when every pixel is ignored


# ------------------------------------------------------------------ networks


def test_aspp_v2_sums_four_dilated_branches():
    torch.manual_seed(0)
    head = ASPPv2(8, 3)
    assert [b.dilation for b in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x = torch.randn(1, 8, 30, 30)
    assert torch.allclose(head(x), sum(b(x) for b in head.branches))
    assert head(x).shape == (1, 3, 30, 30)


def test_tiny_segmenter_and_multiscale_prediction():
    torch.manual_seed(0)
    model = build_segmenter("tiny", 6).eval()
    x = torch.randn(1, 3, 40, 36)
    assert model(x).shape == (1, 6, 40, 36)
    with torch.no_grad():
        probs = predict_multiscale(model, x, scales=(0.75, 1.0, 1.25), flip=True)
    assert probs.shape == (6, 40, 36)
    assert torch.allclose(probs.sum(0), torch.ones(40, 36), atol=1e-5)


def test_presets_follow_the_papers():
    voc, coco = SEG_PRESETS["voc"], SEG_PRESETS["coco"]
    assert (voc.arch, voc.iterations, voc.crop_size, voc.poly_power) == ("deeplabv2_resnet101", 20000, 321, 0.9)
    assert (coco.iterations, coco.crop_size) == (100000, 321)
    assert SEG_PRESETS["quick"].arch == "tiny"


def test_augment_pair_keeps_image_and_labels_aligned():
    rng = np.random.default_rng(0)
    label = np.zeros((40, 50), np.uint8)
    label[:, 25:] = 3
    image = np.where(label[..., None] == 3, np.array([0, 0, 255], np.uint8), np.array([255, 0, 0], np.uint8))
    sal = (label > 0).astype(np.float32)
    for _ in range(5):
        x, y, s = augment_pair(image, label, rng, (0.6, 1.4), 32, True, (0, 0, 0), (1, 1, 1), sal)
        assert x.shape == (3, 32, 32) and y.shape == (32, 32) and s.shape == (32, 32)
        inside = y != 255
        assert (y[inside & (x[2] > 0.9)] == 3).all() and (y[inside & (x[0] > 0.9)] == 0).all()
        assert (x[:, ~inside] == 0).all()                  # padding: mean colour, label ignored
    bx, by, be = pad_batch([np.zeros((3, 4, 5), np.float32), np.ones((3, 6, 3), np.float32)],
                           [np.zeros((4, 5), np.uint8), np.ones((6, 3), np.uint8)])
    assert bx.shape == (2, 3, 6, 5) and by[0, 5, 0] == 255 and by[1, 0, 4] == 255 and be is None


# ------------------------------------------------------------------ Ray Train, 2 workers


def _run_with_gt_masks(quick_run, tmp_path: Path, n: int) -> tuple[Path, list[int]]:
    """A run dir holding quick_run's manifest and, as 'pseudo masks', the GT of its first n
    images, plus a saliency dir of GT foreground."""
    from wsss_ray.data.images import load_mask, save_mask
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.stages.refine import MASKS_SCHEMA, mask_row
    from wsss_ray.store import open_fs, write_table_atomic
    run_dir, _, _ = quick_run
    run = tmp_path / "run"
    shutil.copytree(Path(run_dir, "manifest"), run / "manifest")
    manifest, _ = read_manifest(str(run / "manifest"))
    rows = sorted(manifest.to_pylist(), key=lambda r: r["image_id"])[:n]
    masks = [mask_row(r["image_id"], load_mask(r["mask_uri"])) for r in rows]
    fs, path = open_fs(str(run / "masks" / "gt"))
    write_table_atomic(pa.Table.from_pylist(masks, schema=MASKS_SCHEMA), fs, f"{path}/part-00000.parquet")
    for r in rows:
        stem = Path(r["uri"]).stem
        save_mask(((load_mask(r["mask_uri"]) > 0) * 255).astype(np.uint8), str(tmp_path / "sal" / f"{stem}.png"))
    return run, [r["image_id"] for r in rows]


@pytest.mark.slow
def test_two_worker_segmentation_step_with_saliency(ray_session, quick_run, tmp_path):
    """One tiny epoch (2 steps of 48 px crops) on 2 CPU workers with InferCam's saliency loss,
    then the inference processor (multi-scale + flip) in-process on two images."""
    import pyarrow.parquet as pq
    from wsss_ray.data.images import load_rgb
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.stages.refine import decode_png
    from wsss_ray.stages.segment import SegPredictProcessor, train_segmentation
    run, ids = _run_with_gt_masks(quick_run, tmp_path, 6)
    cfg = dataclasses.replace(SEG_PRESETS["quick"], iterations=2, batch_size=4, crop_size=48, num_workers=2)
    out = train_segmentation(str(run), "gt", cfg, saliency_dir=str(tmp_path / "sal"))
    assert out["skipped"] is False and out["images"] == 6
    assert out["steps_done"] == 2 and np.isfinite(out["loss"])
    ckpt = run / "checkpoints" / "seg_gt"
    assert (ckpt / "model.pt").exists() and (ckpt / "epochs" / "epoch-000" / "state.json").exists()
    meta = json.loads((ckpt / "model.json").read_text())
    assert meta["seg"]["arch"] == "tiny" and meta["num_classes"] == 6 and meta["saliency_dir"]
    assert train_segmentation(str(run), "gt", cfg)["skipped"] is True          # a finished model is kept

    manifest, _ = read_manifest(str(run / "manifest"))
    rows = [r for r in manifest.to_pylist() if r["image_id"] in ids[:2]]
    images = {r["image_id"]: load_rgb(r["uri"]) for r in rows}
    proc = SegPredictProcessor(str(ckpt), str(run / "seg" / "gt"), scales=(0.75, 1.0), flip=True, use_gpu=False)
    with torch.no_grad():
        assert proc.process(0, rows, images) == []
    table = pq.read_table(str(run / "seg" / "gt" / "part-00000.parquet"))
    assert sorted(table.column("image_id").to_pylist()) == sorted(ids[:2])
    pred = decode_png(table.slice(0, 1).to_pylist()[0]["png"])
    assert pred.shape == (112, 112) and pred.max() < 6


def test_predict_mask_with_and_without_crf():
    """Without CRF the mask is the argmax of the multi-scale + flip probabilities; with CRF it
    is the argmax of the CRF's marginals from those probabilities and the RGB image."""
    from wsss_ray.refine.crf import crf_inference_probs
    torch.manual_seed(0)
    model = build_segmenter("tiny", 3, "none", "none", False).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    x = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    with torch.no_grad():
        probs = predict_multiscale(model, x, scales=(1.0,), flip=True)
        plain = predict_mask(model, x, image, scales=(1.0,), flip=True)
        refined = predict_mask(model, x, image, scales=(1.0,), flip=True, crf=True)
    assert plain.shape == refined.shape == (40, 48) and plain.dtype == np.uint8
    assert np.array_equal(plain, probs.argmax(0).numpy())
    assert np.array_equal(refined, crf_inference_probs(image, probs.numpy()).argmax(0))
