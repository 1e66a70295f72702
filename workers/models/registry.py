"""The architecture registry: one `Arch` entry per file, all it takes to add one.

An entry carries what the rest of the engine needs to know about an
architecture: how to build it, which conv variants it supports, and how its
state dict lines up with torchvision's ImageNet checkpoint (for
`model.init: imagenet`, workers/models/inits.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from workers.registry import Registry


@dataclass(frozen=True)
class Arch:
    name: str
    # f(*, num_classes, in_channels, image_size, width, variant) -> nn.Module with a Linear `fc`
    build: Callable[..., nn.Module]
    variants: tuple[str, ...]
    # The stem conv's weight: left at its random init when its shape differs from the
    # checkpoint's (other input channels, a small-image stem).
    stem_key: str
    # torchvision's ImageNet-1k checkpoint file name; "" where none exists (the paper's
    # released CIFAR networks): `model.init: imagenet` is then refused (inits.py).
    imagenet_file: str
    # (regex, replacement) pairs mapping this project's state-dict keys to torchvision's.
    renames: tuple[tuple[str, str], ...] = ()
    # torchvision's convs have biases this model lacks (a BN follows): fold them into
    # the BN's running mean, exactly.
    fold_conv_bias: bool = False

    def torchvision_key(self, key: str) -> str:
        for pattern, repl in self.renames:
            key = re.sub(pattern, repl, key)
        return key


# ValueError: what callers caught before the registry (an unknown name is a bad argument).
ARCHS: Registry[Arch] = Registry("arch", error=ValueError)


def register(arch: Arch) -> Arch:
    return ARCHS.register(arch.name, arch)
