"""InferCam: centres, splits, erase/flip consistency, stop rule, variants, output shapes, and the
activation-aware saliency loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import multiscale_cam, select_and_normalise
from wsss_ray.cams.infercam import (Copy, InferCamConfig, centre_of_mass, class_boxes, grid_to_image,
                                    infercam_maps, infercam_run, iterate_copies, split_boxes, split_buffers)
from wsss_ray.cams.losses import activation_aware_saliency_loss


def random_backbone(seed: int = 0, dim: int = 8, stride: int = 4):
    """A fixed random conv (not flip-symmetric) + avg-pool stride: a tiny deterministic features_fn."""
    g = torch.Generator().manual_seed(seed)
    kernel = torch.randn(dim, 3, 3, 3, generator=g)

    def features(x):
        return torch.relu(F.avg_pool2d(F.conv2d(x, kernel, padding=1), stride, ceil_mode=True))
    weight = torch.rand(4, dim, generator=g) + 0.1  # positive, so every class has some activation
    return features, weight


def channel0(x):
    """Features = the image's channel 0 at full resolution; with weight [[1]] CAM = relu(x[:, 0])."""
    return x[:, :1]


def covered(boxes, height, width):
    mask = torch.zeros(height, width, dtype=torch.int)
    for y0, y1, x0, x1 in boxes:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        mask[y0:y1, x0:x1] += 1
    return mask


# ------------------------------------------------------------------ centres


def test_centre_of_mass_hand_made():
    cam = torch.zeros(6, 8)
    cam[2, 5] = 1.0
    assert centre_of_mass(cam) == pytest.approx((2.0, 5.0))
    cam[4, 1] = 3.0   # weights 1 and 3 -> 3/4 of the way to (4, 1)
    assert centre_of_mass(cam) == pytest.approx((3.5, 2.0))
    assert centre_of_mass(torch.zeros(5, 7)) == pytest.approx((2.0, 3.0))   # empty map: its centre
    assert centre_of_mass(-torch.ones(4, 4)) == pytest.approx((1.5, 1.5))   # negatives ignored


def test_grid_to_image_pixel_centres():
    # the point in image coordinates, truncated as split_img.py's int(center_of_mass(...)): cell 0
    # covers px 0..3, its centre is px 1.5, in pixel 1 (before the fix: rounded to 2)
    assert grid_to_image((0.0, 0.0), (25, 25), (100, 100)) == (1, 1)
    assert grid_to_image((24.0, 12.0), (25, 25), (100, 100)) == (97, 49)   # px 97.5, 49.5
    assert grid_to_image((-3.0, 40.0), (25, 25), (100, 100)) == (0, 99)   # clamped
    assert grid_to_image((10.9, 3.2), (20, 30), (20, 30)) == (10, 3)      # full resolution: int()


# ------------------------------------------------------------------ splits


def test_split_one_class():
    # split_img.py: img[0:cy + 10, 0:cx + 10], img[0:cy + 10, cx - 10:w], ... (ends exclusive: the
    # overlap is 2 * buffer = 20 px; it was 21 before the patches were cut as the authors cut them)
    boxes = split_boxes([(50, 40)], 100, 80, 10)
    assert boxes == [(0, 60, 0, 50), (0, 60, 30, 80), (40, 100, 0, 50), (40, 100, 30, 80)]
    cover = covered(boxes, 100, 80)
    assert (cover >= 1).all()
    assert (cover[40:60, 30:50] == 4).all()          # buffer square around the centre in all four
    assert (cover[:40, :30] == 1).all() and (cover[60:, 50:] == 1).all()


def test_split_two_classes_keeps_rectangle_in_all_patches():
    boxes = split_boxes([(30, 20), (60, 50)], 100, 90, 5)
    cover = covered(boxes, 100, 90)
    assert (cover >= 1).all()
    assert (cover[25:65, 15:55] == 4).all()          # rectangle + buffer in every patch
    for y0, y1, x0, x1 in boxes:
        assert y0 <= 25 and y1 >= 65 and x0 <= 15 and x1 >= 55
    cfg = InferCamConfig()
    per_class = class_boxes(2, [(30, 20), (60, 50)], 100, 90, cfg)
    assert per_class[0] == per_class[1] == split_boxes([(30, 20), (60, 50)], 100, 90, cfg.buffer_two)


def test_split_at_border_clamps_and_covers():
    boxes = split_boxes([(0, 79)], 100, 80, 10)
    assert boxes == [(0, 10, 0, 80), (0, 10, 69, 80), (0, 100, 0, 80), (0, 100, 69, 80)]
    assert (covered(boxes, 100, 80) >= 1).all()
    far = split_boxes([(-5, 500)], 100, 80, 10)      # out-of-image centres clamp, never wrap
    assert (covered(far, 100, 80) >= 1).all()


def test_split_three_plus_classes():
    centres = [(10, 10), (50, 60), (90, 20)]
    per_class = class_boxes(3, centres, 100, 80, InferCamConfig(three_plus="per_class"))
    for boxes, centre in zip(per_class, centres):
        assert boxes == split_boxes([centre], 100, 80, 10)
        assert (covered(boxes, 100, 80) >= 1).all()
    assert class_boxes(3, centres, 100, 80, InferCamConfig(three_plus="none")) == [[(0, 100, 0, 80)]] * 3
    assert class_boxes(1, None, 100, 80, InferCamConfig(split=False)) == [[(0, 100, 0, 80)]]
    with pytest.raises(ValueError):
        InferCamConfig(three_plus="some")
    with pytest.raises(ValueError, match="erase_views"):
        InferCamConfig(erase_views="some")


def test_defaults_are_the_authors_code():
    # split_img.py + infer_cam.py: 3+ classes unsplit, one erase mask per patch over the image's
    # classes, each scaled view erased, every patch at its own size
    cfg = InferCamConfig()
    assert (cfg.three_plus, cfg.erase, cfg.erase_views, cfg.bucket_px) == ("none", "union", "scaled", 1)


def test_buffer_side_scales_the_buffers_with_each_axis():
    # 200 x 80 image, a quarter of each side: 50 px vertically, 20 px horizontally
    cfg = InferCamConfig(buffer_side=0.25)
    assert split_buffers(cfg, 200, 80) == ((50, 20), (50, 20))
    one = class_boxes(1, [(100, 40)], 200, 80, cfg)[0]
    assert one == [(0, 150, 0, 60), (0, 150, 20, 80), (50, 200, 0, 60), (50, 200, 20, 80)]
    # two classes: the same fraction around the rectangle of both centres
    two = class_boxes(2, [(60, 10), (120, 30)], 200, 80, cfg)[0]
    assert two == [(0, 170, 0, 50), (0, 170, 0, 80), (10, 200, 0, 50), (10, 200, 0, 80)]
    # 3+ classes split per class (the paper's text) with the same buffers; 0 keeps the paper's px buffers
    per_class = InferCamConfig(buffer_side=0.25, three_plus="per_class")
    assert class_boxes(3, [(0, 0)] * 3, 200, 80, per_class)[2] == split_boxes([(0, 0)], 200, 80, (50, 20))
    assert class_boxes(3, [(0, 0)] * 3, 200, 80, InferCamConfig(buffer_side=0.25, three_plus="none"))[2] == \
        [(0, 200, 0, 80)]
    assert split_buffers(InferCamConfig(), 200, 80) == ((10, 10), (20, 20))
    assert split_boxes([(50, 40)], 100, 80, (10, 10)) == split_boxes([(50, 40)], 100, 80, 10)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="buffer_side"):
            InferCamConfig(buffer_side=bad)


# ------------------------------------------------------------------ erasing, flips, stopping


@pytest.mark.parametrize("erase_views", ["patch", "scaled"])
def test_erase_mask_is_mirrored_for_flipped_input_with_patch_views(erase_views):
    # "patch": the erased patch is flipped, so its flip hides the mirrored pixels; "scaled" (the
    # authors' code, the default) erases the flipped input with the same, unflipped mask
    h = w = 16
    image = torch.rand(1, 3, h, w) * 0.1
    image[0, 0, 4:8, 1:5] = 5.0                       # asymmetric hot blob on the left
    seen = []

    def spy(x):
        seen.append(x.clone())
        return channel0(x)
    cfg = InferCamConfig(split=False, iterate=True, max_rounds=2, stop_fraction=0.0, erase_views=erase_views)
    iterate_copies(spy, torch.ones(1, 1), image, image.mean((2, 3)), [Copy(0, 0, 0, (0, h, 0, w))],
                   (1.0,), True, cfg)
    assert len(seen) == 2
    erased_in = seen[1]                               # round 1: [erased image, its flip]
    fill = image.mean((2, 3))[0]
    plain_hidden = (erased_in[0] == fill[:, None, None]).all(0)
    flip_hidden = (erased_in[1] == fill[:, None, None]).all(0)
    assert plain_hidden[4:8, 1:5].all() and plain_hidden.sum() == 16
    if erase_views == "scaled":
        assert torch.equal(flip_hidden, plain_hidden)              # the same array positions hidden
        return
    assert torch.equal(flip_hidden, plain_hidden.flip(-1))     # mirrored pixels hidden...
    assert flip_hidden[4:8, w - 5:w - 1].all() and not flip_hidden[4:8, 1:5].any()  # ...not the same ones


def test_iterative_maps_are_flip_equivariant_with_patch_views():
    # A non-symmetric backbone: with a consistent erase mask (erase_views="patch": every view hides
    # the same physical pixels), flipping the image flips the result.
    features, weight = random_backbone(1)
    image = torch.randn(1, 3, 40, 48)
    cfg = InferCamConfig(split=False, iterate=True, stop_fraction=0.0, max_rounds=3, erase_views="patch")
    a = infercam_maps(features, weight, image, [[0, 2]], (10, 12), (1.0, 0.5), True, cfg)[0]
    b = infercam_maps(features, weight, image.flip(-1), [[0, 2]], (10, 12), (1.0, 0.5), True, cfg)[0]
    assert torch.allclose(a, b.flip(-1), atol=1e-4)


def stepped_image():
    """Channel 0: 10% at 1.0, 10% at 0.5, 0.5% (2 px) at 0.25, the rest -1 (mean < 0, so hidden = 0)."""
    image = torch.zeros(1, 3, 20, 20)
    image[0, 0] = -1.0
    image[0, 0, 0:2, :] = 1.0
    image[0, 0, 10:12, :] = 0.5
    image[0, 0, 19, 0:2] = 0.25
    return image


@pytest.mark.parametrize("max_rounds, stop_fraction, expected", [
    (5, 0.02, 3),     # round 3 hides only 0.5% < 2%: stop
    (2, 0.02, 2),     # cap on inferences
    (5, 0.001, 4),    # round 4 finds nothing new: stop
    (1, 0.02, 1),
])
def test_stop_rule(max_rounds, stop_fraction, expected):
    image = stepped_image()
    cfg = InferCamConfig(split=False, max_rounds=max_rounds, stop_fraction=stop_fraction)
    acc, rounds, _ = iterate_copies(channel0, torch.ones(1, 1), image, image.mean((2, 3)),
                                 [Copy(0, 0, 0, (0, 20, 0, 20))], (1.0,), False, cfg)
    assert rounds.tolist() == [expected]
    found = acc[0] > 0.99
    assert found[0:2].all()                                     # round 1 peak
    assert found[10:12].all() == (expected >= 2)               # revealed after hiding the first
    assert found[19, 0:2].all() == (expected >= 3)


def test_run_reports_the_copies_and_their_inferences():
    image = stepped_image()
    cfg = InferCamConfig(split=False, max_rounds=5, stop_fraction=0.02)
    run = infercam_run(channel0, torch.ones(1, 1), image, [[0]], (5, 5), (1.0,), False, cfg)
    assert run.copies == [Copy(0, 0, 0, (0, 20, 0, 20))] and run.rounds.tolist() == [3]   # as test_stop_rule
    assert torch.equal(run.maps[0], infercam_maps(channel0, torch.ones(1, 1), image, [[0]], (5, 5), (1.0,),
                                                  False, cfg)[0])
    plain = infercam_run(channel0, torch.ones(1, 1), image, [[0]], (5, 5), (1.0,), False,
                         InferCamConfig(split=False, iterate=False))
    assert plain.copies == [] and plain.rounds.numel() == 0       # plain CAM plans no copies


def test_erase_scales_apply_to_erased_rounds_only():
    image = stepped_image()
    sizes = []

    def spy(x):
        sizes.append(tuple(x.shape[-2:]))
        return channel0(x)
    cfg = InferCamConfig(split=False, max_rounds=3, stop_fraction=0.0, erase_scales=(1.0,))
    iterate_copies(spy, torch.ones(1, 1), image, image.mean((2, 3)), [Copy(0, 0, 0, (0, 20, 0, 20))],
                   (1.0, 0.5), False, cfg)
    assert sizes == [(20, 20), (10, 10), (20, 20), (20, 20)]   # round 0 at both scales, then 1.0 only


def test_erase_flip_false_drops_the_flipped_copy_of_erased_rounds_only():
    image = stepped_image()
    batches = []

    def spy(x):
        batches.append(x.shape[0])
        return channel0(x)
    cfg = InferCamConfig(split=False, max_rounds=3, stop_fraction=0.0, erase_flip=False)
    acc, rounds, _ = iterate_copies(spy, torch.ones(1, 1), image, image.mean((2, 3)),
                                    [Copy(0, 0, 0, (0, 20, 0, 20))], (1.0,), True, cfg)
    assert batches == [2, 1, 1]              # round 0 with its flip, erased rounds without
    assert rounds.tolist() == [3] and (acc[0] > 0.99)[0:2].all()
    batches.clear()
    iterate_copies(spy, torch.ones(1, 1), image, image.mean((2, 3)), [Copy(0, 0, 0, (0, 20, 0, 20))],
                   (1.0,), True, InferCamConfig(split=False, max_rounds=3, stop_fraction=0.0))
    assert batches == [2, 2, 2]              # the default flips every round


def test_erase_scales_equal_to_the_scales_change_nothing():
    features, weight = random_backbone(4)
    images = torch.randn(2, 3, 32, 40)
    classes = [[1], [0, 2]]
    default = InferCamConfig(stop_fraction=0.0, max_rounds=3)
    same = InferCamConfig(stop_fraction=0.0, max_rounds=3, erase_scales=[1.0, 0.5])   # a list, as JSON gives
    assert same.erase_scales == (1.0, 0.5)
    a = infercam_maps(features, weight, images, classes, (8, 10), (1.0, 0.5), True, default)
    b = infercam_maps(features, weight, images, classes, (8, 10), (1.0, 0.5), True, same)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="erase_scales must be positive"):
        InferCamConfig(erase_scales=(1.0, 0.0))


def test_iterate_false_runs_one_round_per_patch():
    image = stepped_image()
    cfg = InferCamConfig(iterate=False, stop_fraction=0.0)
    copies = [Copy(0, 0, 0, (0, 12, 0, 20)), Copy(0, 0, 0, (8, 20, 0, 20))]
    _, rounds, _ = iterate_copies(channel0, torch.ones(1, 1), image, image.mean((2, 3)), copies, (1.0,), False, cfg)
    assert rounds.tolist() == [1, 1]


# ------------------------------------------------------------------ variants and outputs


def test_no_split_no_iterate_is_plain_cam():
    features, weight = random_backbone(2)
    images = torch.randn(2, 3, 32, 36)
    classes = [[1], [0, 2, 3]]
    cfg = InferCamConfig(split=False, iterate=False)
    got = infercam_maps(features, weight, images, classes, (8, 9), (1.0, 0.5, 1.5), True, cfg)
    want = select_and_normalise(multiscale_cam(features, weight, images, (8, 9), (1.0, 0.5, 1.5), True), classes)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("split, iterate, three_plus", [
    (True, True, "per_class"), (True, True, "none"), (True, False, "per_class"), (False, True, "per_class")])
def test_output_shapes_normalised_and_batched(split, iterate, three_plus):
    features, weight = random_backbone(3)
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return features(x)
    images = torch.randn(2, 3, 32, 40)
    classes = [[1], [0, 2, 3]]
    cfg = InferCamConfig(split=split, iterate=iterate, three_plus=three_plus, max_batch=64, bucket_px=0)
    scales = (1.0, 0.5)
    maps = infercam_maps(counted, weight, images, classes, (8, 10), scales, True, cfg)
    assert [tuple(m.shape) for m in maps] == [(1, 8, 10), (3, 8, 10)]
    for m in maps:
        peaks = m.flatten(1).amax(1)
        assert ((peaks > 0.99) & (peaks <= 1.0)).all() and (m >= 0).all()
    # One canvas a round (bucket_px=0): one batched call per scale for the baseline and per round.
    assert len(calls) <= len(scales) * (int(split) + (cfg.max_rounds if iterate else 1))


def reference_patch(features, weight, image, fill, box, cls, scales, flip, cfg):
    """One patch, alone, at its own size, for one class: the paper's loop (the union loop below
    with a single class; both erase the patch, then scale and flip it: erase_views="patch")."""
    return reference_patch_union(features, weight, image, fill, box, [cls], scales, flip, cfg)[0]


def test_exact_size_batching_equals_a_patch_by_patch_loop():
    # the paper's procedure: per-class erasing and 3+-class splits, the erased patch scaled and flipped
    from wsss_ray.cams.infercam import class_centres, plan_copies
    features, weight = random_backbone(4)
    images = torch.randn(3, 3, 36, 44)
    classes = [[1], [0, 2], [0, 1, 3]]
    scales, out_size = (1.0, 0.5), (9, 11)
    cfg = InferCamConfig(stop_fraction=0.01, bucket_px=1, buffer_one=3, buffer_two=4, erase="per_class",
                         three_plus="per_class", erase_views="patch")
    got = infercam_maps(features, weight, images, classes, out_size, scales, True, cfg)
    centres = class_centres(features, weight, images, classes, out_size, scales, True)
    fill = images.mean((2, 3))
    for i, cls in enumerate(classes):
        full = torch.zeros(len(cls), 36, 44)
        for c in plan_copies([cls], [centres[i]], 36, 44, cfg):
            y0, y1, x0, x1 = c.box
            acc = reference_patch(features, weight, images[i], fill[i], c.box, c.cls, scales, True, cfg)
            full[c.slot, y0:y1, x0:x1] = torch.maximum(full[c.slot, y0:y1, x0:x1], acc)
        small = F.interpolate(full[None], size=out_size, mode="bilinear", align_corners=False)[0]
        want = small / (small.flatten(1).amax(1)[:, None, None] + 1e-5)
        assert torch.allclose(got[i], want, atol=1e-5), i


def test_stored_baseline_maps_replace_the_baseline_inference():
    """Centres from the CAM pass's maps: exact maps give the same InferCam maps without the
    baseline's backbone calls; 8-bit stored maps move a centre by at most one pixel."""
    from wsss_ray.cams.infercam import centres_from_maps, class_centres
    from wsss_ray.store import decode_maps, encode_maps
    features, weight = random_backbone(6)
    images = torch.randn(3, 3, 36, 44)
    classes = [[1], [0, 2], [0, 1, 3]]
    scales, out_size = (1.0, 0.5), (9, 11)
    cfg = InferCamConfig(split=True, iterate=False)
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return features(x)
    inferred = infercam_maps(counted, weight, images, classes, out_size, scales, True, cfg)
    inferred_calls = len(calls)
    baselines = select_and_normalise(multiscale_cam(features, weight, images, out_size, scales, True), classes)
    calls.clear()
    reused = infercam_maps(counted, weight, images, classes, out_size, scales, True, cfg, baselines)
    assert len(calls) == inferred_calls - len(scales)        # one flip-paired call per scale less
    for a, b in zip(inferred, reused):
        assert torch.equal(a, b)
    exact = class_centres(features, weight, images, classes, out_size, scales, True)
    stored = [torch.from_numpy(decode_maps(encode_maps(m.numpy()), m.shape)) for m in baselines]
    for e, q in zip(exact, centres_from_maps(stored, (36, 44))):
        assert all(abs(a - b) <= 1 for pe, pq in zip(e, q) for a, b in zip(pe, pq))


def test_size_buckets_infer_fewer_pixels_than_one_canvas():
    features, weight = random_backbone(5)
    image = torch.randn(1, 3, 40, 40)
    copies = [Copy(0, 0, 0, (0, 10, 0, 12)), Copy(0, 0, 0, (5, 35, 2, 32)), Copy(0, 1, 1, (0, 9, 30, 40))]
    pixels = {}
    for bucket in (0, 8):
        seen = []

        def counted(x):
            seen.append(x.shape[0] * x.shape[-2] * x.shape[-1])
            return features(x)
        cfg = InferCamConfig(bucket_px=bucket, iterate=False)
        iterate_copies(counted, weight, image, image.mean((2, 3)), copies, (1.0,), False, cfg)
        pixels[bucket] = sum(seen)
    assert pixels == {0: 3 * 30 * 30, 8: 16 * 16 + 30 * 30 + 16 * 16}


@pytest.mark.parametrize("unite, dim_peak", [("per_patch", 1.0), ("scaled", 0.25)])
def test_unite_per_patch_lifts_a_weak_patch_to_one_scaled_keeps_it_weak(unite, dim_peak):
    image = torch.zeros(1, 3, 40, 40)
    image[0, 0, 2:6, 2:6] = 4.0        # the object: centre of mass near (10, 10)
    image[0, 0, 34:38, 34:38] = 1.0    # a weak response, alone in the bottom-right patch
    cfg = InferCamConfig(iterate=False, buffer_one=2, unite=unite)
    maps = infercam_maps(channel0, torch.ones(1, 1), image, [[0]], (40, 40), (1.0,), False, cfg)[0][0]
    assert maps[2:6, 2:6].max() == pytest.approx(1.0, abs=1e-3)
    assert maps[34:38, 34:38].max() == pytest.approx(dim_peak, abs=1e-3)


def test_empty_class_list():
    features, weight = random_backbone(4)
    maps = infercam_maps(features, weight, torch.randn(2, 3, 16, 16), [[], [2]], (4, 4), (1.0,), True,
                         InferCamConfig())
    assert maps[0].shape == (0, 4, 4) and maps[1].shape == (1, 4, 4)


# ------------------------------------------------------------------ loss


def test_activation_aware_loss_by_hand():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]],          # background channel
                            [[0.0, 1.0], [1.5, -2.0]]]], requires_grad=True)
    labels = torch.tensor([[[0, 1], [255, 0]]])
    saliency = torch.tensor([[[0.2, 0.9], [0.1, 0.7]]])
    total, parts = activation_aware_saliency_loss(logits, labels, saliency, alpha=0.08)

    def p_bg(a, b):     # softmax channel 0 of logits (a, b)
        return math.exp(a) / (math.exp(a) + math.exp(b))
    seg = -(math.log(p_bg(2.0, 0.0)) + math.log(1 - p_bg(-1.0, 1.0)) + math.log(p_bg(0.0, -2.0))) / 3
    pairs = [((2.0, 0.0), 0.2), ((-1.0, 1.0), 0.9), ((0.5, 1.5), 0.1), ((0.0, -2.0), 0.7)]
    sal = sum(-((1 - s) * math.log(p_bg(*ab)) + s * math.log(1 - p_bg(*ab))) for ab, s in pairs) / 4
    # valid pixels (0,0), (0,1), (1,1): label bg {(0,0), (1,1)}, saliency bg {(0,0)} -> IoU 1/2
    t = 0.5
    expected = seg + 0.08 * (math.exp(t) - 1) * sal
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["seg"].item() == pytest.approx(seg, rel=1e-5)
    assert parts["sal"].item() == pytest.approx(sal, rel=1e-5)
    assert parts["t"].item() == pytest.approx(t)
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_loss_all_ignored_and_saliency_channel_dim():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), 255)
    total, parts = activation_aware_saliency_loss(logits, labels, torch.rand(1, 1, 2, 2))
    assert total.item() == 0.0 and parts["t"].item() == 0.0    # no labels: no seg term, saliency off
    total.backward()


def reference_patch_union(features, weight, image, fill, box, classes, scales, flip, cfg):
    """The authors' loop on one patch: one erase mask, the union over the image's classes (the
    mask applied to the scale-1 patch before scaling: erase_views="patch"; the authors' own
    view-by-view erasing is tests/test_authors_transcription.py's)."""
    y0, y1, x0, x1 = box
    patch = image[:, y0:y1, x0:x1]
    acc = torch.zeros(len(classes), y1 - y0, x1 - x0)
    erased = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool)
    for _ in range(cfg.max_rounds):
        x = torch.where(erased, fill[:, None, None], patch)
        cams = multiscale_cam(features, weight, x[None], tuple(acc.shape[1:]), scales, flip, high_res=False)[0, classes]
        acc = torch.maximum(acc, cams / (cams.flatten(1).amax(1)[:, None, None] + 1e-5))
        now = (acc >= cfg.erase_threshold).any(0)
        newly = (now & ~erased).sum() / erased.numel()
        erased = now
        if newly < cfg.stop_fraction:
            break
    return acc


def test_union_erasing_equals_the_authors_loop_and_shares_one_input_per_patch():
    from wsss_ray.cams.infercam import class_centres, plan_copies
    features, weight = random_backbone(6)
    images = torch.randn(2, 3, 36, 44)
    classes = [[1], [0, 2]]
    scales, out_size = (1.0, 0.5), (9, 11)
    cfg = InferCamConfig(stop_fraction=0.01, bucket_px=1, buffer_one=3, buffer_two=4, erase="union",
                         erase_views="patch")
    inputs = []

    def counted(x):
        inputs.append(x.shape[0])
        return features(x)
    got = infercam_maps(counted, weight, images, classes, out_size, scales, False, cfg)
    centres = class_centres(features, weight, images, classes, out_size, scales, False)
    fill = images.mean((2, 3))
    for i, cls in enumerate(classes):
        full = torch.zeros(len(cls), 36, 44)
        for box in dict.fromkeys(c.box for c in plan_copies([cls], [centres[i]], 36, 44, cfg)):
            y0, y1, x0, x1 = box
            acc = reference_patch_union(features, weight, images[i], fill[i], box, cls, scales, False, cfg)
            full[:, y0:y1, x0:x1] = torch.maximum(full[:, y0:y1, x0:x1], acc)
        small = F.interpolate(full[None], size=out_size, mode="bilinear", align_corners=False)[0]
        want = small / (small.flatten(1).amax(1)[:, None, None] + 1e-5)
        assert torch.allclose(got[i], want, atol=1e-5), i
    # one input per (image, patch) in every round: never more than the 8 patches of the two images
    # per scale (the baseline sees 2 whole images per scale)
    assert max(inputs) <= 8 and sum(inputs) <= len(scales) * (2 + 8 * cfg.max_rounds)


def test_union_and_per_class_erasing_agree_on_single_class_images():
    features, weight = random_backbone(7)
    images = torch.randn(3, 3, 32, 32)
    classes = [[0], [2], [3]]
    maps = {erase: infercam_maps(features, weight, images, classes, (8, 8), (1.0,), True,
                                 InferCamConfig(erase=erase, buffer_one=3)) for erase in ("per_class", "union")}
    assert all(torch.allclose(a, b) for a, b in zip(maps["per_class"], maps["union"]))


def test_union_by_patch_merges_the_masks_of_copies_on_one_patch():
    from wsss_ray.cams.infercam import union_by_patch
    masks = torch.zeros(3, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 0, 1] = True
    merged = union_by_patch(masks, torch.tensor([4, 4, 7]))
    assert merged[0].tolist() == merged[1].tolist() == [[True, False], [False, True]]
    assert merged[2].tolist() == [[False, True], [False, False]]


def test_infercam_flag_is_typed_and_bad_options_stop_the_job_naming_them():
    import argparse

    from wsss_ray.cli import add_pipeline_args, config_from_args, parse_options

    def parse(text):
        return parse_options(text, InferCamConfig, "--infercam")
    assert parse("erase=union, three_plus=none,max_rounds=3,stop_fraction=0.05,iterate=false") == \
        InferCamConfig(erase="union", three_plus="none", max_rounds=3, stop_fraction=0.05, iterate=False)
    assert parse("") == InferCamConfig()
    assert parse("erase_scales=1.0/0.5").erase_scales == (1.0, 0.5)
    assert parse("erase_flip=false,buffer_one=112") == InferCamConfig(erase_flip=False, buffer_one=112)
    assert parse("buffer_side=0.25").buffer_side == 0.25
    for bad, says in [("erase=both", "erase must be"), ("rounds=3", "'rounds=3' is not KEY=VALUE"),
                      ("max_rounds=x", "max_rounds=.x. is not a valid int"),
                      ("split=maybe", "split=.maybe. is not a valid bool"),
                      ("erase_scales=1/x", "erase_scales=.1/x. is not a valid tuple"),
                      ("erase_scales=0", "erase_scales must be positive"), ("unite", "'unite' is not KEY=VALUE"),
                      ("buffer_side=2", "buffer_side must be a fraction")]:
        with pytest.raises(SystemExit, match=says):
            parse(bad)
    parser = argparse.ArgumentParser()
    add_pipeline_args(parser, "cam")
    cfg = config_from_args(parser.parse_args(["--methods", "cam,infercam", "--infercam", "erase=union"]))
    assert cfg.infercam == InferCamConfig(erase="union") and cfg.infercam_ablation is False
    cfg = config_from_args(parser.parse_args(["--methods", "cam,advcam", "--advcam", "steps=3,mu=5",
                                              "--infercam-ablation", "--recam-weight", "w'"]))
    assert cfg.advcam.steps == 3 and cfg.advcam.mu == 5.0 and cfg.infercam_ablation and cfg.recam_weight == "w'"
    with pytest.raises(SystemExit, match="--advcam: 'climb=3' is not KEY=VALUE"):
        config_from_args(parser.parse_args(["--advcam", "climb=3"]))
