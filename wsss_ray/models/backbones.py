"""Backbones for CAM training: each maps ImageNet-normalised images (N, 3, H, W)
to the feature map before pooling (N, out_channels, H/stride, W/stride).

Weights are never downloaded. ``weights`` is "none" (random init; the caller
seeds torch), "imagenet" (a real checkpoint available offline), or a path to a
local state_dict file. Every file goes through ``load_state_dict_file``, which
uses ``torch.load(weights_only=True)`` so no arbitrary object is unpickled, and
every load is strict.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from . import effnet_lite
from .effnet_lite import EFFNET_LITE0_MEAN_STD, IMAGENET_MEAN_STD  # noqa: F401 (re-export)

BACKBONES = ("tiny", "resnet50", "efficientnet_lite0")

# ---------------------------------------------------------------- loading


def load_state_dict_file(path) -> dict:
    """Read a state_dict of tensors from ``path``; unwraps {"state_dict": ...} /
    {"model": ...} containers and strips DataParallel's "module." prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(
            f"{path}: cannot be read as a plain tensor state_dict "
            f"(torch.load with weights_only=True refused it): {e}") from e
    state = _unwrap_container(obj, path)
    return _strip_prefix(state, "module.")


def _unwrap_container(obj, path: Path) -> dict:
    # Training checkpoints often nest the weights next to optimizer state etc.
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            if not obj:
                raise ValueError(f"{path}: the state_dict is empty")
            return dict(obj)
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise ValueError(f"{path}: expected a dict of tensors (optionally under 'state_dict' "
                     f"or 'model'), got {type(obj).__name__}")


def _strip_prefix(state: dict, prefix: str) -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def load_strict(model: nn.Module, state: dict, source) -> None:
    """Load ``state`` into ``model``; any missing/unexpected key or shape mismatch
    raises a ValueError naming ``source`` and the first offending keys."""
    expected = model.state_dict()
    # Old checkpoints lack BN's num_batches_tracked; torch fills it in itself.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: weights do not match {type(model).__name__} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape "
            f"mismatches); first missing: {missing[:5]}; first unexpected: {unexpected[:5]}; "
            f"first shape mismatches: {shapes[:3]}")
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- freezing


def set_bn_eval(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Backbone(nn.Module):
    """Mixin for the backbone contract: BN kept in eval mode when frozen (and
    always, for backbones with ``bn_always_eval``), even after ``.train()``."""

    out_channels: int
    stride: int
    bn_always_eval = False
    frozen = False                    # set per instance by set_frozen
    head_prefixes: tuple = ()         # classifier keys in ImageNet files, not ours

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen or self.bn_always_eval:
            set_bn_eval(self)
        return self

    def reset_requires_grad(self) -> None:
        """Default trainability when not frozen (subclasses pin some layers)."""
        for p in self.parameters():
            p.requires_grad_(True)

    def convert_state_dict(self, state: dict) -> dict:
        """Hook to map foreign key names onto ours before strict loading."""
        return state

    @classmethod
    def imagenet_weights_file(cls) -> Path:
        raise ValueError(f"{cls.__name__} has no ImageNet weights; use weights='none' "
                         f"or a local state_dict file")


def set_frozen(module: nn.Module, frozen: bool) -> None:
    """Linear-probe switch: frozen -> no gradients and BN in eval. For a Backbone the
    BN eval mode survives later ``.train()`` calls; unfreezing restores defaults."""
    if isinstance(module, Backbone):
        module.frozen = frozen
    if frozen:
        for p in module.parameters():
            p.requires_grad_(False)
        set_bn_eval(module)
        return
    if isinstance(module, Backbone):
        module.reset_requires_grad()
    else:
        for p in module.parameters():
            p.requires_grad_(True)
    module.train(module.training)     # re-apply BN modes for the current mode


# ---------------------------------------------------------------- tiny


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCNN(Backbone):
    """~0.28M-parameter CNN at output stride 8, trainable from scratch on CPU."""

    out_channels = 128
    stride = 8

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 32, 2),
            _conv_bn_relu(32, 64, 2),
            _conv_bn_relu(64, 64, 1),
            _conv_bn_relu(64, 128, 2),
            _conv_bn_relu(128, self.out_channels, 1),
        )
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _he_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- resnet50

# torchvision's IMAGENET1K_V1 files (old and new URL hash) are preferred: the
# IRN/ReCAM authors trained from V1.
_RESNET50_V1_FILES = ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth")


class ResNet50OS16(Backbone):
    """torchvision ResNet-50 with layer4's stride set to 1 (not dilated): output
    stride 16, as in the IRN/ReCAM code. BN statistics are frozen (always eval)
    and conv1/bn1 are not trained, like the authors' FixedBatchNorm setup."""

    out_channels = 2048
    stride = 16
    bn_always_eval = True
    head_prefixes = ("fc.",)

    def __init__(self):
        super().__init__()
        net = torchvision.models.resnet50(weights=None)   # He-initialised, no download
        block = net.layer4[0]
        block.conv2.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
        # Keep torchvision's names so its checkpoints load key for key (minus fc).
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.reset_requires_grad()
        self.train()

    def reset_requires_grad(self) -> None:
        super().reset_requires_grad()
        for p in (*self.conv1.parameters(), *self.bn1.parameters()):
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    @classmethod
    def imagenet_weights_file(cls) -> Path:
        ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
        for name in _RESNET50_V1_FILES:
            if (ckpt_dir / name).is_file():
                return ckpt_dir / name
        found = sorted(ckpt_dir.glob("resnet50-*.pth"))
        if found:
            return found[0]
        raise ValueError(
            f"resnet50 ImageNet weights are not available offline: no resnet50-*.pth in "
            f"{ckpt_dir} (wsss_ray never downloads). Pass a local torchvision resnet50 "
            f"state_dict file as weights=<path>, or use weights='none'.")


# ---------------------------------------------------------------- efficientnet-lite0


class EfficientNetLite0Backbone(Backbone, effnet_lite.EfficientNetLite0):
    """EfficientNet-Lite0 features at stride 32 (1280 channels); see effnet_lite.py."""

    head_prefixes = ("fc.",)

    def convert_state_dict(self, state: dict) -> dict:
        if effnet_lite.is_checkpoint_naming(state):
            return effnet_lite.rename_checkpoint_keys(state)
        return state

    @classmethod
    def imagenet_weights_file(cls) -> Path:
        return effnet_lite.checkpoint_path()


def build_efficientnet_lite0_classifier(weights: str = "imagenet") -> nn.Module:
    """The checkpoint's full 1000-way classifier (eval mode), to sanity-check weights."""
    model = effnet_lite.EfficientNetLite0Classifier()
    path = effnet_lite.checkpoint_path() if weights == "imagenet" else Path(weights)
    state = load_state_dict_file(path)
    if effnet_lite.is_checkpoint_naming(state):
        state = effnet_lite.rename_checkpoint_keys(state)
        state = {(k if k.startswith("fc.") else "features." + k): v for k, v in state.items()}
    load_strict(model, state, path)
    return model.eval()


# ---------------------------------------------------------------- factory

_REGISTRY = {
    "tiny": TinyCNN,
    "resnet50": ResNet50OS16,
    "efficientnet_lite0": EfficientNetLite0Backbone,
}


def weights_path(name: str, weights: str = "none") -> Path | None:
    """The local file that ``weights`` names for backbone ``name`` (None for "none"); a
    ValueError says why there is none, before anything is built or trained."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if weights in (None, "", "none"):
        return None
    if weights == "imagenet":       # a class method: building a model here would draw from torch's RNG
        return _REGISTRY[name].imagenet_weights_file()
    if not Path(weights).is_file():
        raise ValueError(f"weights={weights!r} is neither 'none', 'imagenet' nor an existing state_dict file")
    return Path(weights)


def build_backbone(name: str, weights: str = "none") -> nn.Module:
    """Build backbone ``name`` with ``weights`` = "none" | "imagenet" | <state_dict path>."""
    path = weights_path(name, weights)
    model = _REGISTRY[name]()
    if path is not None:
        load_backbone_weights(model, path)
    return model


def load_backbone_weights(model: Backbone, path) -> None:
    """Strictly load a backbone file; an ImageNet classifier head in it is dropped."""
    state = model.convert_state_dict(load_state_dict_file(path))
    state = {k: v for k, v in state.items() if not k.startswith(model.head_prefixes)}
    load_strict(model, state, path)
