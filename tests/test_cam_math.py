"""CAM extraction math (METHODS.md section 0) against a loop-by-loop re-implementation
of the authors' formula and against numbers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import EPS, multiscale_cam, normalise_per_map, select_and_normalise, strided_size


def _reference_cams(features_fn, weight, images, out_size, scales, classes):
    """The authors' make_cam, one image, one scale, one flip and one class at a time."""
    out = []
    for i in range(images.shape[0]):
        image = images[i:i + 1]
        h, w = image.shape[-2:]
        total = torch.zeros(weight.shape[0], *out_size)
        for s in scales:
            size = (int(np.round(h * s)), int(np.round(w * s)))
            x = image if s == 1.0 else F.interpolate(image, size=size, mode="bicubic", align_corners=False)
            f_plain = features_fn(x)[0]
            f_flip = features_fn(x.flip(-1))[0]
            per_class = []
            for c in range(weight.shape[0]):
                a = torch.relu((weight[c][:, None, None] * f_plain).sum(0))
                a_flip = torch.relu((weight[c][:, None, None] * f_flip).sum(0))
                per_class.append(a + a_flip.flip(-1))    # undo the flip before adding
            fused = torch.stack(per_class)[None]
            total += F.interpolate(fused, size=out_size, mode="bilinear", align_corners=False)[0]
        maps = []
        for c in classes[i]:
            maps.append(total[c] / (total[c].max() + 1e-5))
        out.append(torch.stack(maps) if maps else torch.zeros(0, *out_size))
    return out


@pytest.fixture(scope="module")
def tiny_features():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    conv.requires_grad_(False)
    return conv


def test_multiscale_cam_matches_loop_reference(tiny_features):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 10, 13)         # odd sizes: rounding of scaled sizes matters
    weight = torch.randn(3, 4)
    classes = [[0, 2], [1]]
    scales = (1.0, 0.5, 1.5, 2.0)
    out_size = (3, 4)                          # the stride-4 grid (full resolution: the transcription test)
    with torch.no_grad():
        got = select_and_normalise(multiscale_cam(tiny_features, weight, images, out_size, scales, True), classes)
        want = _reference_cams(tiny_features, weight, images, out_size, scales, classes)
    assert len(got) == 2
    for g, r, cls in zip(got, want, classes):
        assert g.shape == (len(cls), *out_size)
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
        # each kept map peaks just under 1
        assert torch.allclose(g.flatten(1).amax(1), torch.ones(len(cls)), atol=1e-4)


def test_multiscale_cam_sums_scales_not_means(tiny_features):
    # the authors sum over scales: running the same scale twice doubles the raw map
    torch.manual_seed(2)
    images, weight = torch.randn(1, 3, 8, 8), torch.randn(2, 4)
    with torch.no_grad():
        once = multiscale_cam(tiny_features, weight, images, (8, 8), (1.0,), True)
        twice = multiscale_cam(tiny_features, weight, images, (8, 8), (1.0, 1.0), True)
    torch.testing.assert_close(twice, 2 * once)


def test_hand_computed_single_scale_no_flip():
    # features (D=2, 2x2), returned whatever the input: the CAM is then W f with no resizing
    f = torch.tensor([[[1.0, 2.0], [0.0, -1.0]],
                      [[0.0, 1.0], [3.0, 1.0]]])[None]
    weight = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    images = torch.zeros(1, 3, 2, 2)
    raw = multiscale_cam(lambda x: f, weight, images, (2, 2), scales=(1.0,), flip=False)
    # class 0: f0 + f1 = [[1,3],[3,0]]; class 1: relu(2 f0 - f1) = relu([[2,3],[-3,-3]])
    torch.testing.assert_close(raw[0, 0], torch.tensor([[1.0, 3.0], [3.0, 0.0]]))
    torch.testing.assert_close(raw[0, 1], torch.tensor([[2.0, 3.0], [0.0, 0.0]]))
    (only_one,) = select_and_normalise(raw, [[1]])
    torch.testing.assert_close(only_one, torch.tensor([[[2.0, 3.0], [0.0, 0.0]]]) / (3.0 + 1e-5))
    (both,) = select_and_normalise(raw, [[0, 1]])
    torch.testing.assert_close(both[0], torch.tensor([[1.0, 3.0], [3.0, 0.0]]) / (3.0 + 1e-5))


def test_hand_computed_bilinear_upsample():
    # 1x2 map [a, b] to width 4, half-pixel centres: a, .75a+.25b, .25a+.75b, b
    f = torch.tensor([[[[2.0, 6.0]]]])
    raw = multiscale_cam(lambda x: f, torch.ones(1, 1), torch.zeros(1, 3, 1, 2), (1, 4), (1.0,), False)
    torch.testing.assert_close(raw[0, 0, 0], torch.tensor([2.0, 3.0, 5.0, 6.0]))


def test_hand_computed_flip_fusion():
    # a features_fn that keeps a 1x3 input: the flipped copy, flipped back, adds the same map
    images = torch.tensor([[1.0, -2.0, 3.0]]).expand(3, 1, 3)[None].contiguous()
    raw = multiscale_cam(lambda x: x[:, :1], torch.ones(1, 1), images, (1, 3), (1.0,), True)
    torch.testing.assert_close(raw[0, 0, 0], torch.tensor([2.0, 0.0, 6.0]))


def test_normalise_per_map_peak():
    torch.manual_seed(3)
    maps = torch.rand(2, 3, 5, 7) * torch.tensor([0.01, 1.0, 50.0])[None, :, None, None]
    out = normalise_per_map(maps)
    peak = maps.flatten(-2).amax(-1)
    torch.testing.assert_close(out.flatten(-2).amax(-1), 1.0 / (1.0 + EPS / peak))
    # each map is scaled by one positive factor: the argmax does not move
    assert torch.equal(out.flatten(-2).argmax(-1), maps.flatten(-2).argmax(-1))


def test_normalise_all_zero_map_stays_zero():
    out = normalise_per_map(torch.zeros(1, 4, 4))
    assert torch.equal(out, torch.zeros(1, 4, 4))


def test_select_no_classes_gives_empty_stack():
    (maps,) = select_and_normalise(torch.rand(1, 3, 4, 4), [[]])
    assert maps.shape == (0, 4, 4)


@pytest.mark.parametrize("h, w, stride, expected", [
    (8, 8, 4, (2, 2)), (9, 8, 4, (3, 2)), (5, 7, 4, (2, 2)), (1, 1, 16, (1, 1)), (17, 33, 16, (2, 3))])
def test_strided_size(h, w, stride, expected):
    assert strided_size(h, w, stride) == expected
