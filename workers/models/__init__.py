"""Model registry: one file per architecture, one entry per name here."""
from __future__ import annotations

from typing import Callable

import torch

from .resnet import resnet18

# Each entry: f(*, num_classes, in_channels, image_size, width) -> nn.Module.
ARCHS: dict[str, Callable[..., torch.nn.Module]] = {
    "resnet18": resnet18,
}


def build_model(arch: str, *, num_classes: int, in_channels: int, image_size: int,
                width: float = 1.0) -> torch.nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, width=width)


__all__ = ["ARCHS", "build_model"]
