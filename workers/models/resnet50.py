"""ResNet-50: torchvision's bottleneck ResNet (v1.5: the stride sits on the
3x3 conv) on the shared ResNet body of resnet.py, so it has the same stem rule
(<= 64 px: 3x3 stride 1, no max-pool; else 7x7/2 + max-pool), width
multiplier, variants and head `fc`. Blocks [3, 4, 6, 3], expansion 4.
Module names mirror torchvision's (conv1/bn1/conv2/bn2/conv3/bn3) except
stem.0/stem.1 for conv1/bn1 and `shortcut` for `downsample` (inits.py maps them).
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import Arch, register
from .resnet import RESNET_RENAMES, ResNet, make_shortcut
from .variants import VARIANTS, conv_kxk, shortcut_pad


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, variant: str = "standard"):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv_kxk(variant, cin, planes, 1, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv_kxk(variant, planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv_kxk(variant, planes, cout, 1, 1)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        pad = shortcut_pad(variant, [(1, 1), (3, stride), (1, 1)])
        self.shortcut = make_shortcut(cin, cout, stride, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def resnet50(*, num_classes: int, in_channels: int, image_size: int,
             width: float = 1.0, variant: str = "standard") -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes=num_classes, in_channels=in_channels,
                  image_size=image_size, width=width, block=Bottleneck, variant=variant)


ARCH = register(Arch("resnet50", resnet50, tuple(VARIANTS), stem_key="stem.0.weight",
                     imagenet_file="resnet50-0676ba61.pth", renames=RESNET_RENAMES))  # IMAGENET1K_V1
