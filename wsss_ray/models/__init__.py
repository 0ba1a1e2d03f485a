"""Model components: backbones (tiny CNN, ResNet-50 OS16, EfficientNet-Lite0)."""
from .backbones import (
    BACKBONES,
    Backbone,
    build_backbone,
    build_efficientnet_lite0_classifier,
    load_state_dict_file,
    set_frozen,
)
from .effnet_lite import EFFNET_LITE0_MEAN_STD

__all__ = [
    "BACKBONES",
    "Backbone",
    "EFFNET_LITE0_MEAN_STD",
    "build_backbone",
    "build_efficientnet_lite0_classifier",
    "load_state_dict_file",
    "set_frozen",
]
