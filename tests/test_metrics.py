"""Seed evaluation: the one-pass multi-threshold confusion against a brute-force argmax per
threshold, and the per-class scores against a hand-made confusion matrix."""
from __future__ import annotations

import numpy as np
import pytest

from wsss_ray.metrics import IGNORE, scores_from_confusion, threshold_confusions


def _brute_force(scores, gt, classes, num_classes, thresholds):
    """Per threshold: argmax over [t, maps...], background plane first (ties -> background)."""
    k = num_classes + 1
    label_of = np.array([0] + [c + 1 for c in classes])
    valid = gt != IGNORE
    out = np.zeros((len(thresholds), k, k), np.int64)
    for i, t in enumerate(thresholds):
        stack = np.concatenate([np.full((1,) + gt.shape, t, np.float64), np.asarray(scores, np.float64)], 0)
        pred = label_of[np.argmax(stack, 0)]
        np.add.at(out[i], (gt[valid].astype(np.int64), pred[valid]), 1)
    return out


def _random_gt(rng, shape, num_classes):
    # classes drawn from all ids, so GT holds classes the image's class list lacks, plus ignore
    gt = rng.integers(0, num_classes + 1, size=shape).astype(np.uint8)
    gt[rng.random(shape) < 0.15] = IGNORE
    return gt


GRID = [0.05 * i for i in range(1, 13)]


@pytest.mark.parametrize("seed", range(4))
def test_random_float32_maps_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_classes, shape = 6, (23, 17)
    classes = sorted(rng.choice(num_classes, size=rng.integers(1, 4), replace=False).tolist())
    scores = rng.random((len(classes),) + shape).astype(np.float32) * 0.7
    gt = _random_gt(rng, shape, num_classes)
    got = threshold_confusions(scores, gt, classes, num_classes, GRID)
    np.testing.assert_array_equal(got, _brute_force(scores, gt, classes, num_classes, GRID))
    assert got.sum() == (gt != IGNORE).sum() * len(GRID)


def test_ties_go_to_background_and_first_class():
    # scores on the threshold grid itself: many exact ties with t and between classes
    rng = np.random.default_rng(10)
    grid = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    num_classes, shape = 4, (12, 9)
    classes = [3, 1]
    scores = rng.choice(np.array(grid), size=(2,) + shape)
    gt = _random_gt(rng, shape, num_classes)
    got = threshold_confusions(scores, gt, classes, num_classes, grid)
    np.testing.assert_array_equal(got, _brute_force(scores, gt, classes, num_classes, grid))


def test_single_pixel_tie_by_hand():
    scores = np.array([[[0.3]], [[0.3]]])          # two classes tie, and tie with t = 0.3
    gt = np.array([[4]], np.uint8)                  # GT is class id 3 (label 4)
    conf = threshold_confusions(scores, gt, [3, 0], 4, [0.2, 0.3, 0.4])
    assert conf[0, 4, 4] == 1                       # t=0.2: foreground, first listed class (3) wins
    assert conf[1, 4, 0] == 1 and conf[2, 4, 0] == 1  # t >= score: background


def test_unsorted_thresholds_match_brute_force():
    rng = np.random.default_rng(5)
    thresholds = [0.4, 0.1, 0.25, 0.05]
    scores = rng.random((2, 10, 10))
    gt = _random_gt(rng, (10, 10), 3)
    got = threshold_confusions(scores, gt, [0, 2], 3, thresholds)
    np.testing.assert_array_equal(got, _brute_force(scores, gt, [0, 2], 3, thresholds))


def test_empty_class_list_predicts_background_everywhere():
    rng = np.random.default_rng(6)
    gt = _random_gt(rng, (8, 8), 3)
    conf = threshold_confusions(np.zeros((0, 8, 8), np.float32), gt, [], 3, GRID)
    np.testing.assert_array_equal(conf, _brute_force(np.zeros((0, 8, 8)), gt, [], 3, GRID))
    valid = gt[gt != IGNORE]
    for i in range(len(GRID)):
        np.testing.assert_array_equal(conf[i][:, 0], np.bincount(valid, minlength=4))
        assert conf[i][:, 1:].sum() == 0


def test_all_ignored_gives_zero_confusion():
    gt = np.full((4, 4), IGNORE, np.uint8)
    conf = threshold_confusions(np.ones((1, 4, 4)), gt, [0], 2, GRID)
    assert conf.shape == (len(GRID), 3, 3) and conf.sum() == 0


def test_scores_from_hand_made_confusion():
    # rows = GT, columns = prediction; class 2 appears in neither
    conf = np.array([[6, 2, 0],
                     [1, 3, 0],
                     [0, 0, 0]])
    # tp = [6, 3], gt = [8, 4], pred = [7, 5], union = [9, 6]
    s = scores_from_confusion(conf)
    assert s["per_class_iou"][0] == pytest.approx(6 / 9)
    assert s["per_class_iou"][1] == pytest.approx(3 / 6)
    assert s["per_class_iou"][2] is None
    assert s["miou"] == pytest.approx((6 / 9 + 3 / 6) / 2)
    assert s["fp"] == pytest.approx(((7 - 6) / 9 + (5 - 3) / 6) / 2)
    assert s["fn"] == pytest.approx(((8 - 6) / 9 + (4 - 3) / 6) / 2)
    assert s["precision"] == pytest.approx((6 / 7 + 3 / 5) / 2)
    assert s["recall"] == pytest.approx((6 / 8 + 3 / 4) / 2)
    # per class IoU + FP + FN = 1, so the means add up too
    assert s["miou"] + s["fp"] + s["fn"] == pytest.approx(1.0)


def test_class_only_predicted_counts_with_zero_iou():
    # class 2 is predicted (2 pixels) but never in GT: it is in the mean with IoU 0, FP 1
    conf = np.array([[5, 0, 1],
                     [0, 4, 1],
                     [0, 0, 0]])
    s = scores_from_confusion(conf)
    assert s["per_class_iou"] == pytest.approx([5 / 6, 4 / 5, 0.0])
    assert s["miou"] == pytest.approx((5 / 6 + 4 / 5 + 0) / 3)
    assert s["fp"] == pytest.approx((0 + 0 + 1) / 3)
    assert s["fn"] == pytest.approx((1 / 6 + 1 / 5 + 0) / 3)
    assert s["precision"] == pytest.approx((5 / 5 + 4 / 4 + 0) / 3)
