"""Multi-label classifier: backbone -> GAP -> 1x1 conv head without bias (the authors' net),
plus ReCAM's second head FC2 and the four CAM weight variants."""
from __future__ import annotations

import torch
import torch.nn as nn

from wsss_ray.models.backbones import build_backbone, set_frozen

CAM_WEIGHT_VARIANTS = ("w", "w'", "w+w'", "w*w'")


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)
        self.fc2 = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=False)   # ReCAM's FC2

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def logits_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats.mean((2, 3), keepdim=True)).flatten(1)

    def forward(self, x: torch.Tensor, with_features: bool = False, from_features: bool = False):
        """Logits, or (logits, features): training needs both from one call through the DDP
        wrapper, whose forward is what arms the gradient all-reduce. ``from_features``: x is
        already a feature map (the linear probe's cached pooled features)."""
        feats = x if from_features else self.features(x)
        logits = self.logits_from_features(feats)
        return (logits, feats) if with_features else logits

    def cam_weight(self, variant: str = "w") -> torch.Tensor:
        """(C, D) weight that turns features into class activations."""
        w, w2 = self.head.weight.flatten(1), self.fc2.weight.flatten(1)
        table = {"w": lambda: w, "w'": lambda: w2, "w+w'": lambda: w + w2, "w*w'": lambda: w * w2}
        if variant not in table:
            raise ValueError(f"unknown CAM weight variant {variant!r}; choose from {CAM_WEIGHT_VARIANTS}")
        return table[variant]()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group (the authors' backbone / head split)."""
        trainable = lambda ps: [p for p in ps if p.requires_grad]
        return {"backbone": trainable(self.backbone.parameters()),
                "head": trainable(self.head.parameters()),
                "fc2": trainable(self.fc2.parameters())}


def build_classifier(backbone: str, weights: str, num_classes: int, freeze_backbone: bool = False,
                     input_norm: str = "native") -> Classifier:
    model = Classifier(build_backbone(backbone, weights), num_classes)
    if input_norm == "imagenet_raw" and hasattr(model.backbone, "in_scale"):
        model.backbone.in_scale.fill_(1.0)     # skip the conversion to the checkpoint's own scaling
        model.backbone.in_shift.fill_(0.0)
    elif input_norm not in ("native", "imagenet_raw"):
        raise ValueError(f"input_norm must be 'native' or 'imagenet_raw', got {input_norm!r}")
    if freeze_backbone:
        set_frozen(model.backbone, True)
    return model
