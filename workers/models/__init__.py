"""Model registry: one file per architecture, each registering an `Arch`
(registry.py), and the one function that builds a trial's network.

Every architecture takes (num_classes, in_channels, image_size, width,
variant) and exposes its classifier as the nn.Linear attribute `fc`.
Variants (variants.py) change how the convs are built; each `Arch` says which
ones it supports. Adding an architecture is one file plus its import below.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from workers.losses import make_head

from .registry import ARCHS, Arch, register
from .variants import INIT_SCHEMES, VARIANTS, apply_init_scheme, check_variant
from .inits import load_init

# Each module registers its Arch.
from . import mobilenetv2  # noqa: F401
from . import mobilenetv2_cifar  # noqa: F401
from . import resnet  # noqa: F401
from . import resnet50  # noqa: F401
from . import vgg  # noqa: F401
from . import vgg16_paper  # noqa: F401

log = logging.getLogger("lth_sweep.models")


def build_model(arch: str, *, num_classes: int, in_channels: int, image_size: int,
                width: float = 1.0, variant: str = "standard") -> torch.nn.Module:
    entry = ARCHS.get(arch)
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    check_variant(variant, entry.variants)
    return entry.build(num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, width=width, variant=variant)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the full state (weights, BN statistics, head)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def make_model(spec, info, *, variant: str = "standard", head: str = "linear", width: Optional[float] = None,
               init_path: Optional[str] = None, with_init: bool = True) -> torch.nn.Module:
    """A trial's network as initialised (the caller seeds torch first): the
    architecture at `width` (default the spec's), the classifier `head`, then
    the spec's `model.init` weights unless `with_init` is False."""
    model = build_model(spec.model.arch, num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size, width=spec.model.width if width is None else width,
                        variant=variant)
    apply_init_scheme(model, spec.model.init_scheme, spec.model.arch, variant)
    if head != "linear":
        model.fc = make_head(head, model.fc.in_features, info.num_classes)
    if with_init and spec.model.init != "random":
        report = load_init(model, spec.model.init, arch=spec.model.arch, path=init_path,
                           image_size=info.image_size, in_channels=info.channels)
        log.info("init %s: %s", spec.model.init, report.summary())
    return model


__all__ = ["ARCHS", "Arch", "INIT_SCHEMES", "VARIANTS", "build_model", "make_model", "model_state", "register"]
