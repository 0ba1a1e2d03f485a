"""AdvCAM as the authors' code climbs: three pair steps against hand-derived gradients, the pair's
clamp and step normalisation, the scale-0.5 schedule, the mask, the Grad-CAM share, ascent,
batching independence, flip equivariance, one step without flips == CAM, gradient hygiene."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss_ray.cams.advcam import (AdvCamConfig, advcam_maps, class_margin, climb, climb_step,
                                  discriminative_mask, fused_gradcam, mask_regulariser, objective_gradient,
                                  steps_at_scale)
from wsss_ray.cams.cam import class_activation, multiscale_cam, select_and_normalise, with_flips

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


def hand_pair_map(x_pair, k, u, n_positive_w):
    """The pair's fused Grad-CAM of class k for features = conv1x1(V): relu(u_k . x) per copy,
    times that copy's count of positive positions over (both copies' counts x P_k)."""
    acts = [torch.einsum("c,chw->hw", u[k], x) for x in x_pair]
    counts = [float((a > 0).sum()) for a in acts]
    shares = [c / (sum(counts) * n_positive_w + 1e-12) for c in counts]
    maps = [torch.relu(a) * s for a, s in zip(acts, shares)]
    return maps[0] + maps[1].flip(-1), shares


def hand_pair_step(x_pair, g0, k, u, n_positive_w, mu, thr, xi):
    """One step of the authors' climb on an [image, mirror] pair, written out per pixel.

    With A_c = u_c . x(p), y_c = mean_p relu(A_c), the margin's gradient at p of copy b is
    sum_c sign_c 1(A_c(p) > 0) u_c / P. The regulariser -mu sum_q M(q) |G(q) - G_0(q)| reaches
    copy 0 at q = p and the mirror copy at q = mirror(p), each through share_b 1(A_k > 0) u_k.
    """
    _, h, w = x_pair[0].shape
    g, shares = hand_pair_map(x_pair, k, u, n_positive_w)
    inside = g / g.max() > thr
    grads = []
    for b, x in enumerate(x_pair):
        grad = torch.zeros_like(x)
        for i in range(h):
            for j in range(w):
                for c in range(u.shape[0]):
                    sign = 1.0 if c == k else -1.0        # y_k - sum over every other class
                    grad[:, i, j] += sign * float(u[c] @ x[:, i, j] > 0) * u[c] / (h * w)
                q = j if b == 0 else w - 1 - j            # where this pixel lands in the fused map
                if inside[i, q]:
                    diff = g[i, q] - g0[i, q]
                    grad[:, i, j] -= mu * torch.sign(diff) * shares[b] * float(u[k] @ x[:, i, j] > 0) * u[k]
        grads.append(grad)
    peak = max(gr.abs().max() for gr in grads) + 1e-12
    low, high = min(x.min() for x in x_pair), max(x.max() for x in x_pair)
    return [torch.clamp(x + xi * gr / peak, low, high) for x, gr in zip(x_pair, grads)]


def test_three_climbing_steps_match_hand_gradient():
    V = torch.tensor([[1.0, -0.5, 0.3], [-0.2, 0.8, 0.6]], dtype=DT)          # D=2 x 3 channels
    W = torch.tensor([[1.0, 0.4], [-0.3, 1.2]], dtype=DT)                     # 2 classes x D
    u = W @ V
    x0 = torch.tensor([[[0.9, -0.4, 0.5], [0.2, 1.1, -0.8]],
                       [[-0.7, 0.5, 0.1], [0.3, -0.2, 0.9]],
                       [[0.1, 0.8, -0.3], [-0.6, 0.4, 0.2]]], dtype=DT)
    features = lambda x: F.conv2d(x, V[:, :, None, None])
    cfg = AdvCamConfig(steps=3, step_size=0.3, mu=7.0, mask_threshold=0.5)
    for k in (0, 1):
        n_positive_w = float((W[k] > 0).sum())
        pair = [x0, x0.flip(-1)]
        g0, _ = hand_pair_map(pair, k, u, n_positive_w)
        want = 0
        for _ in range(cfg.steps):                     # maps of x_0 .. x_2; x_3 is never looked at
            want = want + hand_pair_map(pair, k, u, n_positive_w)[0]
            pair = hand_pair_step(pair, g0, k, u, n_positive_w, cfg.mu, cfg.mask_threshold, cfg.step_size)
        got = climb(features, W, with_flips(x0[None], True), torch.tensor([k]), cfg.steps, cfg, True)[0]
        torch.testing.assert_close(got, want)


def test_step_clamps_to_the_pairs_current_range():
    features, weight = random_backbone()
    x0 = with_flips(random_images(2, 8, 8), True)                   # two pairs
    cls = torch.tensor([0, 3])
    cfg = AdvCamConfig(steps=1, step_size=5.0)                       # huge steps: clamping must bite
    _, grad = objective_gradient(features, weight, x0, cls, None, cfg, True)
    x1 = climb_step(x0, grad, cfg.step_size, 2)
    for p in range(2):
        pair, stepped = x0[[p, p + 2]], x1[[p, p + 2]]
        assert stepped.min() == pair.min() and stepped.max() == pair.max()   # one range for the pair
        assert not torch.equal(stepped, pair)
        # not per channel: some channel leaves its own range (within the pair's)
        own_low, own_high = pair.amin((2, 3), keepdim=True), pair.amax((2, 3), keepdim=True)
        assert ((stepped < own_low) | (stepped > own_high)).any()
    # the step is normalised by the pair's max |gradient|: some pixel of each pair moves by exactly xi
    small = climb_step(x0, grad, 1e-3, 2)
    for p in range(2):
        assert torch.isclose((small - x0)[[p, p + 2]].abs().max(), torch.tensor(1e-3, dtype=DT))


def test_steps_at_scale_follow_the_authors_schedule():
    assert [steps_at_scale(27, s) for s in (1.0, 0.5, 1.5, 2.0)] == [27, 13, 27, 27]
    assert [steps_at_scale(n, 0.5) for n in (1, 5, 6, 10, 11)] == [1, 5, 5, 5, 5]
    assert steps_at_scale(8, 1.0) == 8
    with pytest.raises(ValueError, match="steps"):
        AdvCamConfig(steps=0)


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


def test_gradcam_share_splits_by_positive_positions():
    act = torch.tensor([[[1.0, -1.0], [2.0, 3.0]], [[-1.0, -2.0], [4.0, -3.0]]], dtype=DT)  # image, mirror
    fused = fused_gradcam(act, torch.tensor([2]), True)
    # counts 3 and 1 positive positions, N = (3 + 1) x 2 positive weight entries
    want = torch.relu(act[0]) * 3 / 8 + (torch.relu(act[1]) * 1 / 8).flip(-1)
    torch.testing.assert_close(fused[0], want)
    assert (fused_gradcam(-act.abs() - 1, torch.tensor([2]), True) == 0).all()   # nothing positive: zeros


# ------------------------------------------------------------------ (c) climbing ascends


def test_margin_increases_over_steps():
    features, weight = random_backbone(seed=2)
    x0 = with_flips(random_images(3, 12, 12, seed=6), True)
    cls = torch.tensor([0, 1, 2])
    cfg = AdvCamConfig(steps=1, step_size=0.05, mu=0.0)
    x, first = x0, None
    for _ in range(6):
        margin = class_margin(class_activation(features(x), weight), cls, 2)
        first = margin if first is None else first
        _, grad = objective_gradient(features, weight, x, cls, None, cfg, True)
        x = climb_step(x, grad, cfg.step_size, 2)
    assert (margin > first).all(), (first, margin)


# ------------------------------------------------------------------ (d) batching, flips


def test_batched_classes_match_one_class_at_a_time():
    features, weight = random_backbone(seed=7)
    images = random_images(2, 8, 10, seed=8)
    cfg = AdvCamConfig(steps=3, max_batch=3)                           # chunks cut across images
    args = dict(out_size=(4, 5), scales=(1.0, 0.5), flip=True)
    together = advcam_maps(features, weight, images, [[0, 2], [1, 3]], cfg=cfg, **args)
    for i, cls in enumerate([[0, 2], [1, 3]]):
        for slot, c in enumerate(cls):
            alone = advcam_maps(features, weight, images[i:i + 1], [[c]], cfg=AdvCamConfig(steps=3), **args)
            torch.testing.assert_close(together[i][slot], alone[0][0], atol=1e-5, rtol=1e-5)


def test_mirrored_image_gives_mirrored_map():
    """Mirroring the image swaps the pair's copies, so the fused map is mirrored."""
    features, weight = random_backbone(seed=9)
    images = random_images(1, 8, 10, seed=10)
    # on the stored (stride-4) grid: full resolution crops the 16-multiple from the top left, which no mirror keeps
    args = dict(out_size=(2, 3), scales=(1.0, 1.5), flip=True, cfg=AdvCamConfig(steps=3))
    plain = advcam_maps(features, weight, images, [[1]], **args)[0]
    mirrored = advcam_maps(features, weight, images.flip(-1), [[1]], **args)[0]
    torch.testing.assert_close(mirrored, plain.flip(-1), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ (e) one step without flips is CAM


def test_one_step_without_flip_is_plain_cam():
    # one copy: its Grad-CAM is relu(A_k) / P_k, a per-class constant that normalisation removes
    features, weight = random_backbone(seed=11)
    images = random_images(2, 9, 11, seed=12)
    classes = [[0, 3], [2]]
    scales = (1.0, 0.5, 1.5, 2.0)
    got = advcam_maps(features, weight, images, classes, (9, 11), scales, False, AdvCamConfig(steps=1))
    want = select_and_normalise(multiscale_cam(features, weight, images, (9, 11), scales, False), classes)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ shapes, gradient hygiene, registry


def test_shapes_empty_classes_and_normalisation():
    features, weight = random_backbone()
    images = random_images(3, 8, 8)
    maps = advcam_maps(features, weight, images, [[1], [], [0, 2]], (4, 4), (1.0,), True, AdvCamConfig(steps=2))
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
