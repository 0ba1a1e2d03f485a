"""AdvCAM: one climbing step against hand-derived gradients, the regulariser's mask, ascent,
batching independence, flip fusion, steps=0 == CAM, and gradient hygiene."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss_ray.cams.advcam import (AdvCamConfig, adversarial_objective, advcam_maps, class_margin, climb,
                                  climbing_path, discriminative_mask, mask_regulariser, pick_class, relu_cams)
from wsss_ray.cams.cam import multiscale_cam, select_and_normalise

DT = torch.float64   # climbing amplifies rounding; double keeps comparisons tight


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: extra intra-op threads only thrash on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_backbone(seed: int = 0, dim: int = 6, stride: int = 2):
    """Fixed random conv (not flip-symmetric) + avg-pool: a tiny deterministic features_fn."""
    g = torch.Generator().manual_seed(seed)
    kernel = torch.randn(dim, 3, 3, 3, generator=g, dtype=DT)

    def features(x):
        return torch.relu(F.avg_pool2d(F.conv2d(x, kernel, padding=1), stride, ceil_mode=True))
    weight = torch.randn(4, dim, generator=g, dtype=DT)
    weight[:, :2] = weight[:, :2].abs() + 0.2   # every class has some positive evidence
    return features, weight


def random_images(n: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ------------------------------------------------------------------ (a) hand-derived climbing steps


def hand_step(x, x0, k, u, mu, thr, xi):
    """One AdvCAM step for features = conv1x1(V), CAM weight W, written out per pixel.

    With u_c = W_c V, A_c(p) = u_c . x(p) and y_c = mean_p relu(A_c(p)), so
    dy_c/dx(p) = 1(A_c(p) > 0) u_c / P. The regulariser term at p is
    -mu * M(p) * |relu(A_k(p)) - relu(A_k^0(p))|, whose gradient is
    -mu * M(p) * sign(diff(p)) * 1(A_k(p) > 0) u_k.
    """
    _, h, w = x.shape
    n_pix = h * w
    grad = torch.zeros_like(x)
    cam_k = torch.relu(torch.einsum("c,chw->hw", u[k], x))
    cam_k0 = torch.relu(torch.einsum("c,chw->hw", u[k], x0))
    peak = cam_k.max()
    for i in range(h):
        for j in range(w):
            for c in range(u.shape[0]):
                active = float(u[c] @ x[:, i, j] > 0)
                sign = 1.0 if c == k else -1.0            # y_k - sum over every other class
                grad[:, i, j] += sign * active * u[c] / n_pix
            if cam_k[i, j] > thr * peak:                  # inside M
                diff = cam_k[i, j] - cam_k0[i, j]
                grad[:, i, j] -= mu * torch.sign(diff) * float(u[k] @ x[:, i, j] > 0) * u[k]
    low = x0.amin((1, 2))[:, None, None]
    high = x0.amax((1, 2))[:, None, None]
    stepped = x + xi * grad / (grad.abs().max() + 1e-12)
    return torch.minimum(torch.maximum(stepped, low), high)


def hand_objective(x, x0, k, u, mu, thr):
    a = torch.einsum("nc,chw->nhw", u, x)
    y = torch.relu(a).mean((1, 2))
    cam_k, cam_k0 = torch.relu(a[k]), torch.relu(torch.einsum("c,chw->hw", u[k], x0))
    mask = cam_k > thr * cam_k.max()
    return 2 * y[k] - y.sum() - mu * (mask * (cam_k - cam_k0).abs()).sum()


def test_two_climbing_steps_match_hand_gradient():
    V = torch.tensor([[1.0, -0.5, 0.3], [-0.2, 0.8, 0.6]], dtype=DT)          # D=2 x 3 channels
    W = torch.tensor([[1.0, 0.4], [-0.3, 1.2]], dtype=DT)                     # 2 classes x D
    u = W @ V
    x0 = torch.tensor([[[0.9, -0.4], [0.2, 1.1]],
                       [[-0.7, 0.5], [0.3, -0.2]],
                       [[0.1, 0.8], [-0.6, 0.4]]], dtype=DT)
    features = lambda x: F.conv2d(x, V[:, :, None, None])
    cfg = AdvCamConfig(steps=2, step_size=0.3, mu=7.0, mask_threshold=0.5)
    for k in (0, 1):
        path = list(climbing_path(features, W, x0[None], torch.tensor([k]), cfg))
        assert len(path) == 3                                         # x_0, x_1, x_2
        want = [x0]
        for _ in range(2):
            want.append(hand_step(want[-1], x0, k, u, cfg.mu, cfg.mask_threshold, cfg.step_size))
        for (got_x, got_cams), want_x in zip(path, want):
            torch.testing.assert_close(got_x[0], want_x)
            torch.testing.assert_close(got_cams[0], torch.relu(torch.einsum("nc,chw->nhw", u, want_x)))
        # the objective the step climbed, at x_1 (the regulariser is live from the second step on)
        cams = relu_cams(features, W, want[1][None])
        base = torch.relu(torch.einsum("c,chw->hw", u[k], x0))[None]
        got = adversarial_objective(cams, torch.tensor([k]), base, cfg.mu, cfg.mask_threshold)
        torch.testing.assert_close(got[0], hand_objective(want[1], x0, k, u, cfg.mu, cfg.mask_threshold))
        # the map sums the CAM of every image on the path
        total = sum(torch.relu(torch.einsum("c,chw->hw", u[k], xt)) for xt in want)
        torch.testing.assert_close(climb(features, W, x0[None], torch.tensor([k]), cfg)[0], total)


def test_step_clamps_to_channel_range_of_x0():
    features, weight = random_backbone()
    x0 = random_images(2, 8, 8)
    cfg = AdvCamConfig(steps=4, step_size=5.0)                         # huge steps: clamping must bite
    low, high = x0.amin((2, 3), keepdim=True), x0.amax((2, 3), keepdim=True)
    path = list(climbing_path(features, weight, x0, torch.tensor([0, 3]), cfg))
    for x, _ in path:
        assert (x >= low).all() and (x <= high).all()
    assert not torch.equal(path[-1][0], x0)


# ------------------------------------------------------------------ (b) regulariser mask


def test_mask_keeps_pixels_above_threshold_times_max():
    cam = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]], dtype=DT)
    torch.testing.assert_close(discriminative_mask(cam, 0.5), torch.tensor([[[0.0, 0.0], [0.0, 1.0]]], dtype=DT))
    torch.testing.assert_close(discriminative_mask(cam, 0.2), torch.tensor([[[0.0, 1.0], [1.0, 1.0]]], dtype=DT))
    assert discriminative_mask(torch.zeros(1, 2, 2), 0.5).sum() == 0   # empty map: no mask, no NaN


def test_regulariser_gradient_is_zero_outside_mask():
    g = torch.Generator().manual_seed(3)
    cam = (torch.rand(2, 5, 5, generator=g, dtype=DT) + 0.01).requires_grad_(True)
    base = torch.rand(2, 5, 5, generator=g, dtype=DT)
    mask = discriminative_mask(cam, 0.5).bool()
    (grad,) = torch.autograd.grad(mask_regulariser(cam, base, 0.5).sum(), cam)
    assert mask.any() and (~mask).any()
    assert (grad[~mask] == 0).all()
    torch.testing.assert_close(grad[mask], torch.sign(cam - base).detach()[mask])


def test_regulariser_input_gradient_is_zero_outside_mask():
    """Pixel-wise features (no spatial mixing): the input gradient of the regulariser lives on M."""
    features = lambda x: x[:, :2]
    weight = torch.tensor([[1.0, 0.5], [0.2, -1.0]], dtype=DT)
    x0 = random_images(1, 6, 6, seed=4)
    x = (x0 + 0.3 * random_images(1, 6, 6, seed=5)).requires_grad_(True)
    cls = torch.tensor([0])
    base = pick_class(relu_cams(features, weight, x0), cls)
    cam_k = pick_class(relu_cams(features, weight, x), cls)
    (grad,) = torch.autograd.grad(mask_regulariser(cam_k, base, 0.5).sum(), x)
    mask = discriminative_mask(cam_k, 0.5).bool()[:, None].expand_as(grad)
    assert mask.any() and (~mask).any()
    assert (grad[~mask] == 0).all()
    assert (grad[mask] != 0).any()


# ------------------------------------------------------------------ (c) climbing ascends


def test_objective_increases_over_steps():
    features, weight = random_backbone(seed=2)
    x0 = random_images(3, 12, 12, seed=6)
    cls = torch.tensor([0, 1, 2])
    cfg = AdvCamConfig(steps=6, step_size=0.05, mu=0.0)
    path = list(climbing_path(features, weight, x0, cls, cfg))
    first, last = class_margin(path[0][1], cls), class_margin(path[-1][1], cls)
    assert (last > first).all(), (first, last)


# ------------------------------------------------------------------ (d) batching, flips


def test_batched_classes_match_one_class_at_a_time():
    features, weight = random_backbone(seed=7)
    images = random_images(2, 8, 10, seed=8)
    cfg = AdvCamConfig(steps=2, max_batch=3)                           # chunks cut across images
    args = dict(out_size=(4, 5), scales=(1.0, 0.5), flip=True)
    together = advcam_maps(features, weight, images, [[0, 2], [1, 3]], cfg=cfg, **args)
    for i, cls in enumerate([[0, 2], [1, 3]]):
        for slot, c in enumerate(cls):
            alone = advcam_maps(features, weight, images[i:i + 1], [[c]], cfg=AdvCamConfig(steps=2), **args)
            torch.testing.assert_close(together[i][slot], alone[0][0], atol=1e-5, rtol=1e-5)


def test_mirrored_image_gives_mirrored_map():
    """Each copy climbs alone and the flip copy's map is mirrored back, so flip fusion is equivariant."""
    features, weight = random_backbone(seed=9)
    images = random_images(1, 8, 10, seed=10)
    args = dict(out_size=(8, 10), scales=(1.0, 1.5), flip=True, cfg=AdvCamConfig(steps=2))
    plain = advcam_maps(features, weight, images, [[1]], **args)[0]
    mirrored = advcam_maps(features, weight, images.flip(-1), [[1]], **args)[0]
    torch.testing.assert_close(mirrored, plain.flip(-1), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ (e) steps=0 is CAM


def test_zero_steps_is_plain_cam():
    features, weight = random_backbone(seed=11)
    images = random_images(2, 9, 11, seed=12)
    classes = [[0, 3], [2]]
    scales = (1.0, 0.5, 1.5, 2.0)
    got = advcam_maps(features, weight, images, classes, (9, 11), scales, True, AdvCamConfig(steps=0))
    want = select_and_normalise(multiscale_cam(features, weight, images, (9, 11), scales, True), classes)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ shapes, gradient hygiene, registry


def test_shapes_empty_classes_and_normalisation():
    features, weight = random_backbone()
    images = random_images(3, 8, 8)
    maps = advcam_maps(features, weight, images, [[1], [], [0, 2]], (4, 4), (1.0,), True, AdvCamConfig(steps=1))
    assert [tuple(m.shape) for m in maps] == [(1, 4, 4), (0, 4, 4), (2, 4, 4)]
    for m in maps:
        if len(m):
            assert (m >= 0).all() and (m.flatten(1).amax(1) <= 1).all()
    assert [tuple(m.shape) for m in advcam_maps(features, weight, images, [[], [], []], (4, 4))] == [(0, 4, 4)] * 3


def test_under_no_grad_params_untouched():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).double().eval()
    net[0].weight.requires_grad_(False)                                # mixed flags must survive as they are
    flags = [p.requires_grad for p in net.parameters()]
    weight = torch.randn(2, 4, dtype=DT, requires_grad=True)
    with torch.no_grad():
        maps = advcam_maps(net, weight, random_images(1, 6, 6), [[0, 1]], (6, 6), (1.0,), True,
                           AdvCamConfig(steps=2))
        assert not torch.is_grad_enabled()
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters()) and weight.grad is None
    assert not maps[0].requires_grad


def test_registry_builds_advcam():
    from wsss_ray.cams.registry import MAP_METHODS, build_map_fn
    from wsss_ray.models.backbones import build_backbone
    from wsss_ray.models.classifier import Classifier
    assert "advcam" in MAP_METHODS
    torch.manual_seed(0)
    model = Classifier(build_backbone("tiny", "none"), 3).eval()
    fn = build_map_fn("advcam", model, {"scales": (1.0,), "flip": True, "steps": 1, "max_batch": 2,
                                        "unrelated": 1})
    with torch.no_grad():
        maps = fn(torch.randn(2, 3, 24, 24), [[0], [1, 2]], (6, 6))
    assert [tuple(m.shape) for m in maps] == [(1, 6, 6), (2, 6, 6)]
    assert all(p.grad is None for p in model.parameters())
