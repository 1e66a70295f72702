"""Model registry: one file per architecture, one entry per name here.

Every architecture takes (num_classes, in_channels, image_size, width,
variant) and exposes its classifier as the nn.Linear attribute `fc`.
Variants (variants.py) change how the convs are built; `ARCH_VARIANTS` says
which ones each architecture supports.
"""
from __future__ import annotations

from typing import Callable

import torch

from .mobilenetv2 import mobilenetv2
from .resnet import resnet18
from .resnet50 import resnet50
from .variants import VARIANTS, check_variant
from .vgg import vgg16

# Each entry: f(*, num_classes, in_channels, image_size, width, variant) -> nn.Module.
ARCHS: dict[str, Callable[..., torch.nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "mobilenetv2": mobilenetv2,
}

ARCH_VARIANTS: dict[str, tuple[str, ...]] = {
    "resnet18": VARIANTS,
    "resnet50": VARIANTS,
    "vgg16": VARIANTS,
    "mobilenetv2": ("standard",),
}


def build_model(arch: str, *, num_classes: int, in_channels: int, image_size: int,
                width: float = 1.0, variant: str = "standard") -> torch.nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    check_variant(variant, ARCH_VARIANTS[arch])
    return ARCHS[arch](num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, width=width, variant=variant)


__all__ = ["ARCHS", "ARCH_VARIANTS", "VARIANTS", "build_model"]
