"""Segmentation networks trained on pseudo masks (step 5 of the pipeline), their loss,
schedule presets and multi-scale inference. Pure torch (no Ray).

Architectures (``build_segmenter``):
- ``deeplabv2_resnet101``: ResNet-101 at output stride 8 (layer3/4 dilated) + the
  DeepLab-v2 ASPP head: four 3x3 convs at rates 6, 12, 18, 24, outputs summed. This is the
  network the three papers report (METHODS.md section 4).
- ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``: torchvision's DeepLabV3.
- ``tiny``: a small stride-4 net with the same summed-ASPP head, for CPU tests and demos.
Weights are never downloaded: ``backbone_weights`` is "none", "imagenet" (a torchvision
ResNet file already in the torch hub cache) or a path; ``weights`` a full state_dict path.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from wsss_ray.cams.losses import activation_aware_saliency_loss
from wsss_ray.data.augment import IGNORE  # the label every loss skips (augment_pair pads with it)

ARCHS = ("deeplabv2_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "tiny")


@dataclass(frozen=True)
class SegConfig:
    """Training and inference settings; presets below (DeepLab-v2 as used by IRN's authors)."""
    arch: str = "deeplabv2_resnet101"
    backbone_weights: str = "imagenet"
    iterations: int = 20000
    batch_size: int = 10              # global batch, split across Ray Train workers
    crop_size: int = 321
    scale_range: tuple = (0.5, 1.5)
    hflip: bool = True
    optimizer: str = "sgd"            # sgd | adam
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0        # DeepLab trains the new head 10x faster
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    freeze_bn: bool = True            # batch 10 over GPUs: BN statistics stay ImageNet's
    saliency_alpha: float = 0.08      # InferCam's alpha, used when a saliency dir is given
    eval_scales: tuple = (0.5, 0.75, 1.0, 1.25, 1.5)
    eval_flip: bool = True
    eval_crf: bool = False            # dense CRF on the predicted probabilities (the papers' optional step)
    num_workers: int = 2
    use_gpu: bool = False
    seed: int = 0


SEG_PRESETS = {
    "voc": SegConfig(),
    "coco": SegConfig(iterations=100000),
    # CPU demo on the 112 px demo world: the tiny net from scratch, Adam
    "demo": SegConfig(arch="tiny", backbone_weights="none", iterations=300, batch_size=16, crop_size=96,
                      scale_range=(0.75, 1.25), optimizer="adam", lr=2e-3, head_lr_mult=1.0, weight_decay=1e-4,
                      freeze_bn=False, eval_scales=(0.75, 1.0, 1.25)),
    "quick": SegConfig(arch="tiny", backbone_weights="none", iterations=40, batch_size=8, crop_size=64,
                       scale_range=(0.75, 1.25), optimizer="adam", lr=3e-3, head_lr_mult=1.0, weight_decay=1e-4,
                       freeze_bn=False, eval_scales=(1.0,)),
}


# ------------------------------------------------------------------ networks


class ASPPv2(nn.Module):
    """DeepLab-v2 ASPP: parallel dilated 3x3 classifiers, summed (not concatenated)."""

    def __init__(self, in_channels: int, num_classes: int, rates=(6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class SegNet(nn.Module):
    """backbone -> head -> logits bilinearly resized to the input size."""

    def __init__(self, backbone: nn.Module, head: nn.Module, freeze_bn: bool = False):
        super().__init__()
        self.backbone, self.head, self.freeze_bn = backbone, head, freeze_bn

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if isinstance(feats, dict):          # torchvision's IntermediateLayerGetter
            feats = feats["out"]
        return F.interpolate(self.head(feats), size=x.shape[2:], mode="bilinear", align_corners=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        trainable = lambda ps: [p for p in ps if p.requires_grad]
        return {"backbone": trainable(self.backbone.parameters()), "head": trainable(self.head.parameters())}


class ResNetTrunk(nn.Module):
    """torchvision ResNet without avgpool/fc, keeping its key names (its files load as is)."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def tiny_trunk(width: int = 32) -> nn.Sequential:
    def block(cin, cout, stride, dilation=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    return nn.Sequential(block(3, width // 2, 2), block(width // 2, width, 2), block(width, width, 1),
                         block(width, 2 * width, 1, 2))


def _resnet_file(depth: int, backbone_weights: str) -> Path | None:
    if backbone_weights == "none":
        return None
    if backbone_weights != "imagenet":
        return Path(backbone_weights)
    found = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob(f"resnet{depth}-*.pth"))
    if not found:
        raise ValueError(f"no resnet{depth}-*.pth in the torch hub cache (wsss_ray never downloads): "
                         f"pass backbone_weights=<path> or 'none'")
    return found[0]


def _load_trunk(trunk: nn.Module, path: Path | None) -> None:
    from wsss_ray.models.backbones import load_state_dict_file, load_strict
    if path is None:
        return
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("fc.")}
    load_strict(trunk, state, path)


def build_segmenter(arch: str, num_classes: int, backbone_weights: str = "none", weights: str = "none",
                    freeze_bn: bool = False) -> SegNet:
    """``num_classes`` includes background (K = classes + 1)."""
    if arch == "tiny":
        model = SegNet(tiny_trunk(), ASPPv2(64, num_classes, rates=(1, 2, 3, 4)), freeze_bn)
    elif arch == "deeplabv2_resnet101":
        trunk = ResNetTrunk(torchvision.models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True]))
        _load_trunk(trunk, _resnet_file(101, backbone_weights))
        model = SegNet(trunk, ASPPv2(2048, num_classes), freeze_bn)
    elif arch in ("deeplabv3_resnet50", "deeplabv3_resnet101"):
        depth = 50 if arch.endswith("50") else 101
        net = getattr(torchvision.models.segmentation, arch)(weights=None, weights_backbone=None,
                                                             num_classes=num_classes, aux_loss=False)
        _load_trunk(net.backbone, _resnet_file(depth, backbone_weights))
        model = SegNet(net.backbone, net.classifier, freeze_bn)
    else:
        raise ValueError(f"unknown segmentation arch {arch!r}; choose from {ARCHS}")
    if weights != "none":
        from wsss_ray.models.backbones import load_state_dict_file, load_strict
        load_strict(model, load_state_dict_file(weights), weights)
    return model


# ------------------------------------------------------------------ loss and schedule


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, saliency: torch.Tensor | None = None,
                      alpha: float = 0.08) -> tuple[torch.Tensor, dict]:
    """Cross-entropy over non-ignored pixels; with a saliency map, InferCam's
    ``L_seg + alpha * (exp(t) - 1) * L_sal`` (wsss_ray.cams.losses)."""
    if saliency is not None:
        total, parts = activation_aware_saliency_loss(logits, labels, saliency, alpha, IGNORE)
        return total, {k: float(v) for k, v in parts.items()}
    if (labels != IGNORE).any():
        ce = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE)
    else:
        ce = logits.sum() * 0.0          # keeps DDP's graph, avoids CE's NaN
    return ce, {"seg": float(ce.detach())}


def build_seg_optimizer(model: SegNet, cfg: SegConfig) -> torch.optim.Optimizer:
    lrs = {"backbone": cfg.lr, "head": cfg.lr * cfg.head_lr_mult}
    groups = [{"params": ps, "lr": lrs[n], "initial_lr": lrs[n], "name": n}
              for n, ps in model.param_groups().items() if ps]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# ------------------------------------------------------------------ inference


def predict_multiscale(model: nn.Module, x: torch.Tensor, scales=(1.0,), flip: bool = True) -> torch.Tensor:
    """Mean softmax (K, H, W) over scales (and horizontal flips) of one image (1, 3, H, W)."""
    h, w = x.shape[2:]
    total = 0.0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                              mode="bilinear", align_corners=False)
        views = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = model(views)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        probs = torch.softmax(logits, 1)
        total = total + probs[0] + (probs[1].flip(-1) if flip else 0.0)
    return total / (len(scales) * (2 if flip else 1))


# ------------------------------------------------------------------ artifacts


def predict_mask(model: nn.Module, x: torch.Tensor, image: np.ndarray, scales=(1.0,), flip: bool = True,
                 crf: bool = False) -> np.ndarray:
    """Label mask (H, W) uint8 of one normalised image x (1, 3, H, W): multi-scale + flip
    probabilities, optionally refined by the dense CRF on the RGB ``image`` (H, W, 3), argmax."""
    probs = predict_multiscale(model, x, scales, flip).cpu()
    if crf:
        from wsss_ray.refine.crf import crf_inference_probs
        probs = torch.from_numpy(crf_inference_probs(image, probs.numpy()))
    return probs.argmax(0).numpy().astype(np.uint8)


def save_segmenter(model: nn.Module, meta: dict, directory: str) -> None:
    """``model.pt`` (tensors only) + ``model.json``; model.pt is renamed last (completion mark)."""
    from wsss_ray.models.checkpoint import save_state_dir
    save_state_dir(model.state_dict(), meta, directory)


def load_segmenter(directory: str) -> tuple[SegNet, dict]:
    from wsss_ray.models.checkpoint import load_state
    from wsss_ray.store import open_fs
    fs, path = open_fs(directory)
    with fs.open_input_stream(f"{path}/model.json") as f:
        meta = json.loads(f.read().decode())
    model = build_segmenter(meta["seg"]["arch"], meta["num_classes"], "none", "none", meta["seg"]["freeze_bn"])
    model.load_state_dict(load_state(directory))
    return model.eval(), meta


def total_epochs(iterations: int, num_images: int, batch_size: int) -> tuple[int, int]:
    """(epochs, steps per epoch) covering ``iterations`` steps of the global batch."""
    steps = max(1, math.ceil(num_images / max(batch_size, 1)))
    return max(1, math.ceil(iterations / steps)), steps
