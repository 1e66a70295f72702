"""MobileNetV2 (torchvision layout), with the common CIFAR variant for small images.

Module names match torchvision's mobilenet_v2 (`features.0` stem
conv-BN-ReLU6, `features.1..17` inverted residuals with `.conv`,
`features.18` the last 1x1 conv), so its ImageNet weights map one to one;
the classifier is a single Linear `fc` (no dropout) after global average
pooling.

Small images (<= 64 px): the stem conv has stride 1 and the first stride-2
stage (t=6, c=24) has stride 1, as in the common CIFAR MobileNetV2, so a
32x32 image reaches the last stage as 4x4 and an 8x8 digit as 1x1 (a 3x3
stride-2 conv with padding 1 maps 1 -> 1). Larger images use torchvision's
strides (total /32).

Width: every channel count is max(1, round(c * width)) (the project's rule,
not torchvision's round-to-multiple-of-8; identical at width 1); the last
conv has round(1280 * max(1, width)) channels as in torchvision. Convs have
bias=False (a BN follows each). Only variant "standard".
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import Arch, register
from .variants import FeaturesNet

# t (expansion), c (channels), n (repeats), s (stride of the first repeat)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn_relu6(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = max(1, round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn_relu6(cin, hidden, 1, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(FeaturesNet):
    def __init__(self, *, num_classes: int, in_channels: int, image_size: int,
                 width: float = 1.0, variant: str = "standard"):
        super().__init__()
        ch = lambda c: max(1, round(c * width))  # noqa: E731
        small = image_size <= 64
        self.small_stem = small
        cin = ch(32)
        features: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, 1 if small else 2)]
        for i, (t, c, n, s) in enumerate(SETTINGS):
            if small and i == 1:
                s = 1
            for j in range(n):
                features.append(InvertedResidual(cin, ch(c), s if j == 0 else 1, t))
                cin = ch(c)
        last = round(1280 * max(1.0, width))
        features.append(conv_bn_relu6(cin, last, 1, 1))
        self.finish(features, last, num_classes)


def mobilenetv2(*, num_classes: int, in_channels: int, image_size: int,
                width: float = 1.0, variant: str = "standard") -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, width=width, variant=variant)


ARCH = register(Arch("mobilenetv2", mobilenetv2, ("standard",), stem_key="features.0.0.weight",
                     imagenet_file="mobilenet_v2-b0353104.pth"))
