"""Backbones: shapes/strides, frozen BN, strict and safe weight loading, real
EfficientNet-Lite0 ImageNet weights."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from wsss_ray.models import (
    EFFNET_LITE0_MEAN_STD,
    build_backbone,
    build_efficientnet_lite0_classifier,
    load_state_dict_file,
    set_frozen,
)
from wsss_ray.models import effnet_lite

COCO_TINY = Path(__file__).resolve().parents[2] / "shared/data/coco_tiny"
ZEBRA = COCO_TINY / "train2017/000000499716.jpg"   # a zebra fills the frame
IMAGENET_ZEBRA = 340
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _bns(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_backbone("resnet50", "none")


@pytest.mark.parametrize("name, channels, stride", [
    ("tiny", 128, 8), ("resnet50", 2048, 16), ("efficientnet_lite0", 1280, 32)])
def test_output_shape_and_stride_at_224(name, channels, stride, resnet):
    torch.manual_seed(0)
    model = resnet if name == "resnet50" else build_backbone(name)
    assert (model.out_channels, model.stride) == (channels, stride)
    with torch.no_grad():
        y = model.eval()(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, channels, 224 // stride, 224 // stride)


@pytest.mark.parametrize("name", ["tiny", "efficientnet_lite0"])
def test_odd_sizes_give_ceil_of_stride(name):
    model = build_backbone(name).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 101, 75))
    assert y.shape[2:] == (math.ceil(101 / model.stride), math.ceil(75 / model.stride))


def test_tiny_is_small():
    n = sum(p.numel() for p in build_backbone("tiny").parameters())
    assert 100_000 <= n <= 300_000


def test_resnet50_bn_frozen_and_stem_not_trained(resnet):
    resnet.train()
    assert all(not bn.training for bn in _bns(resnet))
    assert not any(p.requires_grad for p in resnet.conv1.parameters())
    assert not any(p.requires_grad for p in resnet.bn1.parameters())
    assert all(p.requires_grad for p in resnet.layer1.parameters())
    before = resnet.layer3[0].bn1.running_mean.clone()
    with torch.no_grad():
        resnet(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, resnet.layer3[0].bn1.running_mean)


def test_resnet50_layer4_not_dilated_and_stride_one(resnet):
    convs = [m for m in resnet.layer4.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.dilation == (1, 1) and c.stride == (1, 1) for c in convs)
    assert resnet.layer3[0].conv2.stride == (2, 2)
    assert resnet.stride == 16


def test_resnet50_imagenet_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match="not available offline"):
        build_backbone("resnet50", "imagenet")


def test_set_frozen_survives_train_and_unfreezes():
    model = build_backbone("tiny")
    set_frozen(model, True)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not bn.training for bn in _bns(model))
    set_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in _bns(model))


def test_set_frozen_false_keeps_resnet_defaults(resnet):
    set_frozen(resnet, True)
    set_frozen(resnet, False)
    resnet.train()
    assert not any(p.requires_grad for p in resnet.conv1.parameters())
    assert all(p.requires_grad for p in resnet.layer4.parameters())
    assert all(not bn.training for bn in _bns(resnet))


def test_effnet_imagenet_loads_strictly_with_real_stats():
    raw = load_state_dict_file(effnet_lite.checkpoint_path())
    renamed = effnet_lite.rename_checkpoint_keys(raw)
    model = build_backbone("efficientnet_lite0", "imagenet")
    own = set(model.state_dict())
    assert own == {k for k in renamed if not k.startswith("fc.")}
    assert torch.equal(model.stem.conv.weight, raw["_conv_stem.weight"])
    var = model.head.bn.running_var
    assert not torch.allclose(var, torch.ones_like(var))
    assert model.blocks[5].depthwise.bn.running_mean.abs().mean() > 0.01
    assert EFFNET_LITE0_MEAN_STD == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.skipif(not ZEBRA.is_file(), reason="coco_tiny not present")
def test_effnet_classifier_top1_on_a_coco_photo():
    from PIL import Image

    im = Image.open(ZEBRA).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
    x = ((x - IMAGENET_MEAN) / IMAGENET_STD)[None]
    clf = build_efficientnet_lite0_classifier()
    with torch.no_grad():
        first, second = clf(x), clf(x)
    assert torch.equal(first, second)
    assert first.argmax(1).item() == IMAGENET_ZEBRA


class _NotATensor:
    pass


def test_load_rejects_arbitrary_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": _NotATensor()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(path)


def test_load_unwraps_containers_and_module_prefix(tmp_path):
    torch.manual_seed(0)
    src = build_backbone("tiny")
    path = tmp_path / "ckpt.pth"
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    torch.manual_seed(1)
    dst = build_backbone("tiny", str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_mismatched_keys_name_the_file_and_keys(tmp_path):
    state = build_backbone("tiny").state_dict()
    state["extra.weight"] = state.pop("features.0.0.weight")
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="wrong.pth") as err:
        build_backbone("tiny", str(path))
    assert "features.0.0.weight" in str(err.value) and "extra.weight" in str(err.value)


def test_bad_names_and_weights_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("tiny", "imagenet")
    with pytest.raises(ValueError, match="neither"):
        build_backbone("tiny", "/nonexistent/weights.pth")
