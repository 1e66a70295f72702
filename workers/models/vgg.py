"""VGG-16 with BatchNorm, small-image variant.

The conv stack is torchvision's vgg16_bn `features` layer for layer (same
indices, so its ImageNet weights map one to one): per cfg entry a 3x3 conv +
BN + ReLU, "M" a 2x2/2 max-pool. Two changes make it work for any image size
and keep it light:

- Pooling: a max-pool whose input is already smaller than 2 px on a side is
  skipped (`MaxPoolIfLarge`), so an 8x8 digit goes 8 -> 4 -> 2 -> 1 -> 1 -> 1
  instead of vanishing, and a 32x32 image is pooled all five times to 1x1 as
  in the usual CIFAR VGG. The decision is taken per forward from the actual
  map size, not from `image_size`.
- Head: adaptive average pooling to 1x1, then a single Linear `fc`
  (512 * width -> num_classes), as in the CIFAR VGG, instead of torchvision's
  7x7 pool and 4096-4096 MLP (120M parameters that only suit 224 px inputs).

Conv biases: bias=False, the project's rule where a BN follows (a bias
before BN is cancelled by the BN's mean). torchvision's vgg16_bn does have
conv biases; inits.py folds them exactly into the BN running means.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import Arch, register
from .variants import VARIANTS, FeaturesNet, conv_kxk

CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
         512, 512, 512, "M", 512, 512, 512, "M"]


class MaxPoolIfLarge(nn.MaxPool2d):
    """2x2/2 max-pool that passes a map smaller than 2 px on a side through."""

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 2 or x.shape[-2] < 2:
            return x
        return super().forward(x)


def vgg_features(cfg: list, in_channels: int, width: float, conv) -> tuple[list, int]:
    """The layers of a VGG cfg (a channel count: conv(cin, cout) + BN + ReLU; "M": a
    max-pool) and the last channel count; vgg16_paper.py builds its own with this too."""
    layers, cin = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(MaxPoolIfLarge())
            continue
        cout = max(1, round(v * width))
        layers += [conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return layers, cin


class VGG(FeaturesNet):
    def __init__(self, cfg: list, *, num_classes: int, in_channels: int,
                 image_size: int, width: float = 1.0, variant: str = "standard"):
        super().__init__()
        layers, cin = vgg_features(cfg, in_channels, width, lambda i, o: conv_kxk(variant, i, o, 3, 1))
        self.finish(layers, cin, num_classes)


def vgg16(*, num_classes: int, in_channels: int, image_size: int,
          width: float = 1.0, variant: str = "standard") -> VGG:
    return VGG(CFG16, num_classes=num_classes, in_channels=in_channels,
               image_size=image_size, width=width, variant=variant)


# features.* as torchvision's vgg16_bn (its classifier.* is not used); its conv
# biases are folded into the following BN (inits.py).
ARCH = register(Arch("vgg16", vgg16, tuple(VARIANTS), stem_key="features.0.weight",
                     imagenet_file="vgg16_bn-6c64b313.pth", fold_conv_bias=True))
