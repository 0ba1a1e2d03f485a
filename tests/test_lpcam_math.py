"""LPCAM math (METHODS.md section 2): prototype bank, cosine terms, map, selection rules,
foreground/context split."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from wsss_ray.cams.lpcam import CONTEXT, FG, PrototypeBank, lpcam_terms, multiscale_lpcam, split_positions
from wsss_ray.cams.prototypes import class_scores, select_context, select_foreground

R2 = math.sqrt(2.0)

# 3 classes, D = 2. class 0: fg (1,0) and (1,1), context (0,2); class 1: fg (3,4), no
# context; class 2: no prototype at all. Raw (unnormalised) vectors: the bank normalises.
VECTORS = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [3.0, 4.0]])
CLASS_IDS = [0, 0, 0, 1]
KINDS = [FG, FG, CONTEXT, FG]
# a 1x2 feature map: position a = (1,1), position b = (2,0)
FEATS = torch.tensor([[[[1.0, 2.0]], [[1.0, 0.0]]]])          # (N=1, D=2, h=1, w=2)

# cosines by hand: a.(1,0)=1/r2, a.(1,1)=1, a.(0,1)=1/r2, a.(.6,.8)=1.4/r2
#                  b.(1,0)=1,    b.(1,1)=1/r2, b.(0,1)=0,  b.(.6,.8)=.6
FG_HAND = torch.tensor([[(1 / R2 + 1) / 2, (1 + 1 / R2) / 2],
                        [1.4 / R2, 0.6],
                        [0.0, 0.0]])
BG_HAND = torch.tensor([[1 / R2, 0.0],
                        [0.0, 0.0],
                        [0.0, 0.0]])


@pytest.fixture()
def bank():
    return PrototypeBank.from_arrays(VECTORS, CLASS_IDS, KINDS, num_classes=3)


def test_bank_from_arrays(bank):
    torch.testing.assert_close(bank.vectors, torch.tensor([[1.0, 0.0], [1 / R2, 1 / R2], [0.0, 1.0], [0.6, 0.8]]))
    torch.testing.assert_close(bank.fg_avg, torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 0]]))
    torch.testing.assert_close(bank.bg_avg, torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))


def test_lpcam_terms_by_hand(bank):
    fg, bg = lpcam_terms(FEATS, bank)
    assert fg.shape == bg.shape == (1, 3, 1, 2)
    torch.testing.assert_close(fg[0, :, 0], FG_HAND)
    torch.testing.assert_close(bg[0, :, 0], BG_HAND)


def test_lpcam_terms_scale_invariant(bank):
    # cosine similarity: scaling the features changes nothing
    fg, bg = lpcam_terms(FEATS * 7.5, bank)
    torch.testing.assert_close(fg[0, :, 0], FG_HAND)
    torch.testing.assert_close(bg[0, :, 0], BG_HAND)


def by_max(m: torch.Tensor) -> torch.Tensor:
    """The authors' division: each map over its own max, no epsilon."""
    return m / m.amax(-1, keepdim=True)


def test_multiscale_lpcam_single_scale_by_hand(bank):
    # class 0 has context: relu(FG - BG); class 1 has none: FG itself (the authors apply the
    # ReLU only to the difference); class 2 has no prototype: zeros
    images = torch.zeros(1, 3, 1, 2)
    (maps,) = multiscale_lpcam(lambda x: FEATS, bank, images, [[0, 1, 2]], (1, 2), scales=(1.0,), flip=False)
    torch.testing.assert_close(maps[0, 0], by_max(torch.relu(FG_HAND[0] - BG_HAND[0])))
    torch.testing.assert_close(maps[1, 0], by_max(FG_HAND[1]))
    assert not torch.isnan(maps).any()
    assert torch.equal(maps[2], torch.zeros(1, 2))


def test_multiscale_lpcam_relu_per_scale_not_after_the_mean(bank):
    # second "scale": position a = (0,1) -> class 0 FG = (0 + 1/r2)/2, BG = 1: FG - BG < 0 there.
    # Per-scale ReLU keeps a's first-scale value / 2; a ReLU after the mean would give 0.
    second = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])
    feats = iter([FEATS, second])
    (maps,) = multiscale_lpcam(lambda x: next(feats), bank, torch.zeros(1, 3, 1, 2), [[0]], (1, 2),
                               scales=(1.0, 1.0), flip=False, normalise=False)
    a_first = (1 / R2 + 1) / 2 - 1 / R2
    b_both = (1 + 1 / R2) / 2
    torch.testing.assert_close(maps[0, 0], torch.tensor([a_first / 2, b_both]))


def test_multiscale_lpcam_fg_only(bank):
    images = torch.zeros(1, 3, 1, 2)
    (maps,) = multiscale_lpcam(lambda x: FEATS, bank, images, [[0, 1]], (1, 2), scales=(1.0,), flip=False,
                               fg_only=True)
    torch.testing.assert_close(maps[:, 0], by_max(FG_HAND[:2]))


def test_multiscale_lpcam_selects_each_images_classes(bank):
    feats = torch.cat([FEATS, FEATS.flip(-1)])
    maps = multiscale_lpcam(lambda x: feats, bank, torch.zeros(2, 3, 1, 2), [[1], [0, 2]], (1, 2), (1.0,), False)
    assert [m.shape[0] for m in maps] == [1, 2]
    want0 = torch.relu(FG_HAND[0] - BG_HAND[0]).flip(-1)
    torch.testing.assert_close(maps[1][0, 0], want0 / want0.max())


def test_multiscale_lpcam_flip_and_scales_match_loop_reference(bank):
    # flip fused on features; per scale relu(FG - BG) (FG alone without context), bilinear up,
    # mean over scales, over the max
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, stride=2, padding=1).requires_grad_(False)
    images = torch.randn(2, 3, 9, 12)
    scales, out_size = (1.0, 0.5, 1.5), (3, 3)        # the stride-4 grid (full resolution: the transcription test)
    got = multiscale_lpcam(conv, bank, images, [[0, 1], [1]], out_size, scales, flip=True)
    for i, cls in enumerate([[0, 1], [1]]):
        total = torch.zeros(3, *out_size)
        for s in scales:
            x = images[i:i + 1]
            if s != 1.0:
                x = F.interpolate(x, size=(round(9 * s), round(12 * s)), mode="bicubic", align_corners=False)
            f = conv(x) + conv(x.flip(-1)).flip(-1)
            fg, bg = lpcam_terms(f, bank)
            term = torch.stack([torch.relu(fg[0, 0] - bg[0, 0]), fg[0, 1], fg[0, 2]])
            total += F.interpolate(term[None], size=out_size, mode="bilinear", align_corners=False)[0]
        total = total / len(scales)
        for j, c in enumerate(cls):
            torch.testing.assert_close(got[i][j], total[c] / total[c].max(), atol=1e-5, rtol=1e-5)


def test_class_scores_softmax():
    rng = np.random.default_rng(0)
    centres, w = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    p = class_scores(centres, w)
    logits = centres @ w.T
    want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(p, want, rtol=1e-10)
    np.testing.assert_allclose(p.sum(1), 1.0)


def test_select_foreground():
    chosen, fallback = select_foreground(np.array([0.2, 0.95, 0.9, 0.91]), 0.9)
    assert chosen.tolist() == [1, 3] and not fallback      # strict: exactly 0.9 is not taken
    chosen, fallback = select_foreground(np.zeros(0), 0.9)
    assert len(chosen) == 0 and not fallback


def test_select_foreground_fallbacks():
    # none passes mu_f: the authors' COCO rule keeps every centre within 1e-6 of the best
    scores = np.array([0.2, 0.7, 0.7 - 5e-7, 0.5, 0.7 - 2e-6])
    chosen, fallback = select_foreground(scores, 0.9)
    assert chosen.tolist() == [1, 2] and fallback
    chosen, fallback = select_foreground(scores, 0.9, "best_one")
    assert chosen.tolist() == [1] and fallback
    with pytest.raises(ValueError, match="fallback"):
        select_foreground(scores, 0.9, "closest")


def test_select_context_strict_bounds():
    scores = np.array([0.05, 0.06, 0.5, 0.9, 0.89, 0.01, 0.95])
    assert select_context(scores, 0.05, 0.9).tolist() == [1, 2, 4]
    assert select_context(scores, 0.0, 0.5).tolist() == [0, 1, 5]
    assert select_context(np.array([0.99]), 0.05, 0.9).tolist() == []


def test_split_positions_threshold_and_nearest_resampling():
    d, h, w = 3, 2, 3
    features = torch.arange(d * h * w, dtype=torch.float32).reshape(d, h, w)
    # CAM at 2x the feature grid: nearest picks the top-left pixel of each 2x2 block;
    # the other three pixels say the opposite, so any averaging would change the split
    cell = np.array([[0.5, 0.0, 0.1],       # 0.1 == tau -> foreground (>=)
                     [0.09, 0.3, 0.0]])
    cam = np.where(np.kron(cell, np.ones((2, 2))) >= 0.1, 0.0, 0.9)
    cam[::2, ::2] = cell
    fg, ctx = split_positions(features, torch.tensor(cam), tau=0.1)
    rows = features.reshape(d, -1).T.numpy()
    np.testing.assert_array_equal(fg, rows[[0, 2, 4]])
    np.testing.assert_array_equal(ctx, rows[[1, 3, 5]])


def test_split_positions_cap_is_bounded_and_seeded():
    torch.manual_seed(0)
    features = torch.randn(4, 6, 6)
    cam = torch.zeros(6, 6)
    cam[:3] = 1.0                                # 18 foreground, 18 context positions
    rows = features.reshape(4, -1).T.numpy()
    fg, ctx = split_positions(features, cam, 0.5, cap=5, rng=np.random.default_rng(3))
    assert fg.shape == (5, 4) and ctx.shape == (5, 4)
    # a subset of the right kind, each row once
    assert all(any(np.array_equal(r, x) for x in rows[:18]) for r in fg)
    assert all(any(np.array_equal(r, x) for x in rows[18:]) for r in ctx)
    assert len({r.tobytes() for r in fg}) == 5
    fg2, ctx2 = split_positions(features, cam, 0.5, cap=5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(fg, fg2)
    np.testing.assert_array_equal(ctx, ctx2)
    # a cap above the count keeps everything
    fg3, ctx3 = split_positions(features, cam, 0.5, cap=100, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(fg3, rows[:18])
    np.testing.assert_array_equal(ctx3, rows[18:])


def test_from_table_empty_raises_clear_error():
    empty = pa.table({"class_id": pa.array([], pa.int32()), "kind": pa.array([], pa.string()),
                      "vector": pa.array([], pa.list_(pa.float32()))})
    with pytest.raises(ValueError, match="empty prototype set"):
        PrototypeBank.from_table(empty, num_classes=3)
    with pytest.raises(ValueError, match="empty prototype set"):
        PrototypeBank.from_table(None, num_classes=3)


def test_from_table_matches_from_arrays():
    table = pa.table({"class_id": CLASS_IDS, "kind": KINDS, "vector": [list(v) for v in VECTORS]})
    a = PrototypeBank.from_table(table, 3)
    b = PrototypeBank.from_arrays(VECTORS, CLASS_IDS, KINDS, 3)
    for x, y in ((a.vectors, b.vectors), (a.fg_avg, b.fg_avg), (a.bg_avg, b.bg_avg)):
        torch.testing.assert_close(x, y)
