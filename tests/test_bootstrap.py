"""Paired bootstrap of best-threshold mIoU differences, against plain loops over resamples."""
from __future__ import annotations

import numpy as np
import pytest

from wsss_ray.bootstrap import best_miou_of_weights, paired_bootstrap, resample_weights
from wsss_ray.metrics import class_counts, miou_of_counts, scores_from_confusion


def random_confusions(rng, n, t, k):
    return rng.integers(0, 20, size=(n, t, k, k)) * (rng.random((n, t, k, k)) < 0.6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_vectorised_miou_matches_the_scorer():
    rng = np.random.default_rng(0)
    conf = random_confusions(rng, 30, 1, 5)[:, 0]
    conf[3] = 0                                         # nothing present: NaN
    conf[4, 2:, :] = 0
    conf[4, :, 2:] = 0                                  # classes 2-4 absent: the mean skips them
    got = miou_of_counts(class_counts(conf))
    want = [scores_from_confusion(c)["miou"] for c in conf]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isnan(got[3])


def test_resampled_best_miou_equals_a_plain_loop():
    rng = np.random.default_rng(1)
    conf = random_confusions(rng, 12, 4, 4)
    weights = resample_weights(12, 25, seed=3)
    assert (weights.sum(1) == 12).all()
    got = best_miou_of_weights(class_counts(conf), weights, chunk=7)
    for r, w in enumerate(weights):
        # the resample as a list of drawn images, summed as full confusions
        drawn = [i for i in range(12) for _ in range(w[i])]
        total = sum(conf[i] for i in drawn)
        want = max(scores_from_confusion(total[t])["miou"] for t in range(4))
        assert got[r] == pytest.approx(want, rel=1e-12)


def test_identical_methods_have_a_zero_interval():
    counts = class_counts(random_confusions(np.random.default_rng(2), 20, 3, 4))
    out = paired_bootstrap(counts, counts.copy(), resamples=200)
    assert out["difference"] == 0 and out["low"] == 0 and out["high"] == 0


def one_class_images(n, iou_per_image):
    """n images, 1 threshold, background + 1 class; the class has 10 GT pixels and the
    method finds 10 * iou of them with no false positives; background is the other 90."""
    conf = np.zeros((n, 1, 2, 2), np.int64)
    hit = int(round(10 * iou_per_image))
    conf[:, 0, 1, 1], conf[:, 0, 1, 0], conf[:, 0, 0, 0] = hit, 10 - hit, 90
    return conf


def test_a_method_better_on_every_image_has_an_interval_above_zero():
    good, poor = class_counts(one_class_images(15, 0.8)), class_counts(one_class_images(15, 0.4))
    # by hand: class IoU 0.8 vs 0.4; background 90 / (90 + 2) vs 90 / (90 + 6)
    want = (0.8 + 90 / 92) / 2 - (0.4 + 90 / 96) / 2
    out = paired_bootstrap(good, poor, resamples=300, seed=5)
    assert out["difference"] == pytest.approx(want)
    # every image has the same counts, so every resample has the same difference
    assert out["low"] == pytest.approx(want) and out["high"] == pytest.approx(want)
    assert out["share_above_zero"] == 1.0
    assert paired_bootstrap(poor, good, resamples=300)["high"] < 0


def test_interval_widens_with_disagreement_between_images():
    rng = np.random.default_rng(7)
    a = one_class_images(40, 0.6)
    b = one_class_images(40, 0.6)
    b[rng.permutation(40)[:20], 0, 1] = [[6, 4]]        # B worse on half ...
    b[rng.permutation(40)[:20], 0, 1] = [[2, 8]]        # ... or on a random other half
    out = paired_bootstrap(class_counts(a), class_counts(b), resamples=500, seed=0)
    assert out["low"] < out["difference"] < out["high"]
    assert out["high"] - out["low"] > 0.01


def test_mismatched_inputs_are_refused():
    counts = class_counts(random_confusions(np.random.default_rng(0), 5, 2, 3))
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(counts, counts[:4])
    with pytest.raises(ValueError, match="two images"):
        paired_bootstrap(counts[:1], counts[:1])
