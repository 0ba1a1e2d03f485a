"""ReCAM's SCE loss (METHODS.md section 1): values by hand and by loops, gradient paths,
the DDP-averaged loss of training against the single-process loss, and lambda = 0."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from wsss_ray.cams.recam import recam_sce_mean, sce_loss_terms
from wsss_ray.config import TrainConfig
from wsss_ray.models.classifier import build_classifier
from wsss_ray.stages.train import build_optimizer, classifier_loss


def _sce_reference(features, weight, fc2, targets, detach_mask=False):
    """Loop version: per image, per positive class k: M_k, f_k = GAP(M_k f), z'_k = W2 f_k,
    -log softmax(z'_k)[k]; mean over the image's classes, then over labelled images."""
    per_image = []
    for n in range(features.shape[0]):
        losses = []
        for k in range(targets.shape[1]):
            if targets[n, k] <= 0:
                continue
            a = torch.relu((weight[k][:, None, None] * features[n]).sum(0))
            m = a / (a.max() + 1e-5)
            if detach_mask:
                m = m.detach()
            f_k = (m[None] * features[n]).mean((1, 2))
            z = fc2 @ f_k
            losses.append(-torch.log_softmax(z, 0)[k])
        if losses:
            per_image.append(torch.stack(losses).mean())
    return torch.stack(per_image).mean() if per_image else features.sum() * 0


def test_sce_hand_computed_one_image():
    # D=1, 1x2 map f = [1, 3]; W = [[1], [-1]]: class 0 map relu([1, 3]), class 1 map zero
    f = torch.tensor([[[[1.0, 3.0]]]])
    w = torch.tensor([[1.0], [-1.0]])
    w2 = torch.tensor([[1.0], [2.0]])
    # M_0 = [1, 3] / (3 + 1e-5); f_0 = mean(M_0 * f) = (1 + 9) / (2 (3 + 1e-5)); z' = [f_0, 2 f_0]
    f0 = 10.0 / (2 * (3 + 1e-5))
    want = math.log(1 + math.exp(f0))                  # -log softmax([f0, 2 f0])[0]
    total, count = sce_loss_terms(f, w, w2, torch.tensor([[1.0, 0.0]]))
    assert count == 1
    assert total.item() == pytest.approx(want, rel=1e-6)
    # class 1: M_1 = 0, f_1 = 0, z' = 0: CE = log 2 whatever the weights
    total, _ = sce_loss_terms(f, w, w2, torch.tensor([[0.0, 1.0]]))
    assert total.item() == pytest.approx(math.log(2), rel=1e-6)
    # both classes: mean over the image's classes
    total, count = sce_loss_terms(f, w, w2, torch.tensor([[1.0, 1.0]]))
    assert count == 1 and total.item() == pytest.approx((want + math.log(2)) / 2, rel=1e-6)


def test_sce_matches_loops_on_small_batch():
    torch.manual_seed(0)
    feats = torch.randn(3, 2, 2, 2)
    w, w2 = torch.randn(3, 2), torch.randn(3, 2)
    # image 0: two classes, image 1: none, image 2: one class
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    total, count = sce_loss_terms(feats, w, w2, targets)
    assert count == 2
    want = _sce_reference(feats, w, w2, targets)
    torch.testing.assert_close(total / 2, want)
    torch.testing.assert_close(recam_sce_mean(feats, w, w2, targets), want)
    # the sum is over labelled images of their own means (not a mean over all pairs)
    only0 = _sce_reference(feats[:1], w, w2, targets[:1])
    only2 = _sce_reference(feats[2:], w, w2, targets[2:])
    torch.testing.assert_close(total, only0 + only2)
    # fc2 weight given as a 1x1 conv weight (C, D, 1, 1) is the same
    torch.testing.assert_close(sce_loss_terms(feats, w, w2[..., None, None], targets)[0], total)


def test_unlabelled_images_contribute_nothing():
    torch.manual_seed(1)
    feats = torch.randn(2, 2, 2, 2, requires_grad=True)
    w, w2 = torch.randn(3, 2), torch.randn(3, 2, requires_grad=True)
    total, count = sce_loss_terms(feats, w, w2, torch.zeros(2, 3))
    assert count == 0 and total.item() == 0.0
    mean = recam_sce_mean(feats, w, w2, torch.zeros(2, 3))
    assert mean.item() == 0.0
    mean.backward()
    assert not torch.isnan(feats.grad).any() and not torch.isnan(w2.grad).any()
    assert torch.count_nonzero(feats.grad) == 0


def test_all_zero_cam_gives_no_nan():
    # negative activations everywhere: M_k = 0 / 1e-5 = 0, f_k = 0, loss log C
    feats = torch.ones(1, 2, 2, 2, requires_grad=True)
    w = -torch.ones(3, 2)
    loss = recam_sce_mean(feats, w, torch.randn(3, 2), torch.tensor([[0.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def _grads_through_conv(detach, reference_detach=None, use_default=False):
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    head = torch.nn.Parameter(torch.randn(3, 4))
    fc2 = torch.nn.Parameter(torch.randn(3, 4))
    x = torch.randn(2, 3, 5, 5)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    feats = conv(x)
    if use_default:
        loss = recam_sce_mean(feats, head, fc2, targets)
    elif reference_detach is None:
        loss = recam_sce_mean(feats, head, fc2, targets, detach=detach)
    else:
        loss = _sce_reference(feats, head, fc2, targets, detach_mask=reference_detach)
    return torch.autograd.grad(loss, [conv.weight, head, fc2], allow_unused=True)


def test_gradient_reaches_backbone_through_mask_unless_detached():
    live = _grads_through_conv(detach=False)
    frozen = _grads_through_conv(detach=True)
    # the mask path adds to the backbone gradient
    assert not torch.allclose(live[0], frozen[0], atol=1e-6)
    # each equals the loop reference with the same detach choice
    for got, want in zip(live, _grads_through_conv(None, reference_detach=False)):
        torch.testing.assert_close(got, want)
    for got, want in zip(frozen, _grads_through_conv(None, reference_detach=True)):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            torch.testing.assert_close(got, want)
    # not detached unless asked (the authors' code), in the function and in training's config
    for got, want in zip(_grads_through_conv(None, use_default=True), live):
        torch.testing.assert_close(got, want)
    assert TrainConfig().recam_detach is False
    # the BCE head enters the SCE only through M_k: a gradient when live, none when detached
    assert torch.count_nonzero(live[1]) > 0
    assert frozen[1] is None or torch.count_nonzero(frozen[1]) == 0


# ------------------------------------------------------------------ DDP equivalence

IMAGES_SEED, NUM_CLASSES = 5, 3
# rank 0: two labelled images; rank 1: one labelled, one unlabelled
TARGETS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])


def _ddp_worker(rank, world, init_file, state_path, images, targets, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = build_classifier("tiny", "none", NUM_CLASSES)
        model.load_state_dict(torch.load(state_path, weights_only=True))
        model.eval()                      # BN on running stats: per-rank batches change nothing
        ddp = DistributedDataParallel(model)
        per = images.shape[0] // world
        part = slice(rank * per, (rank + 1) * per)
        loss, _ = classifier_loss(ddp, images[part], targets[part], TrainConfig(recam_lambda=1.0), world)
        loss.backward()
        torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                   f"{out_dir}/grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_match_single_process(tmp_path):
    torch.manual_seed(IMAGES_SEED)
    model = build_classifier("tiny", "none", NUM_CLASSES)
    images = torch.randn(4, 3, 24, 24)
    state_path = tmp_path / "state.pt"
    torch.save(model.state_dict(), state_path)

    # single process: BCE over all 4 images + SCE over the 3 labelled ones
    model.eval()
    feats = model.features(images)
    bce = F.multilabel_soft_margin_loss(model.logits_from_features(feats), TARGETS)
    sce = _sce_reference(feats, model.head.weight.flatten(1), model.fc2.weight.flatten(1), TARGETS)
    (bce + sce).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(state_path), images, TARGETS, str(tmp_path)),
             nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=f"rank {rank} {name}")


# ------------------------------------------------------------------ lambda = 0


def test_lambda_zero_is_plain_bce_and_leaves_fc2_alone():
    torch.manual_seed(3)
    model = build_classifier("tiny", "none", NUM_CLASSES)
    images = torch.randn(2, 3, 16, 16)
    loss, parts = classifier_loss(model, images, TARGETS[:2], TrainConfig(recam_lambda=0.0), world=1)
    want = F.multilabel_soft_margin_loss(model(images), TARGETS[:2])
    torch.testing.assert_close(loss, want)
    assert "sce" not in parts
    loss.backward()
    assert model.fc2.weight.grad is None
    assert model.head.weight.grad is not None


def test_lambda_positive_adds_sce():
    torch.manual_seed(4)
    model = build_classifier("tiny", "none", NUM_CLASSES).eval()
    images = torch.randn(4, 3, 16, 16)
    loss, parts = classifier_loss(model, images, TARGETS, TrainConfig(recam_lambda=0.5), world=1)
    feats = model.features(images)
    bce = F.multilabel_soft_margin_loss(model.logits_from_features(feats), TARGETS)
    sce = _sce_reference(feats, model.head.weight.flatten(1), model.fc2.weight.flatten(1), TARGETS)
    torch.testing.assert_close(loss, bce + 0.5 * sce)
    assert parts["sce"] == pytest.approx(sce.item(), rel=1e-5)


def test_optimizer_groups():
    model = build_classifier("tiny", "none", NUM_CLASSES)
    plain = build_optimizer(model, TrainConfig(recam_lambda=0.0))
    assert [g["name"] for g in plain.param_groups] == ["backbone", "head"]
    recam = build_optimizer(model, TrainConfig(recam_lambda=1.0, lr_fc2=5e-4))
    groups = {g["name"]: g for g in recam.param_groups}
    assert set(groups) == {"backbone", "head", "fc2"}
    assert groups["fc2"]["lr"] == 5e-4 and groups["fc2"]["params"] == [model.fc2.weight]
