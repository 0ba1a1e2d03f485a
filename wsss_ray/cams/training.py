"""Classifier training math: losses, schedules, targets. Pure torch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def multilabel_soft_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over classes and images of BCE with logits (torch's multilabel_soft_margin_loss)."""
    return F.multilabel_soft_margin_loss(logits, targets)


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    return base_lr * (1 - step / max(1, total_steps)) ** power


def labels_to_targets(labels: list[list[int]], num_classes: int) -> torch.Tensor:
    targets = torch.zeros(len(labels), num_classes)
    for i, cls in enumerate(labels):
        targets[i, list(cls)] = 1.0
    return targets
