"""MobileNetV2 as the paper's released code defines it (VITA-Group/DataEfficientLTH,
models/mobilenet.py, `MobileNetV2`: kuangliu/pytorch-cifar's CIFAR MobileNetV2),
the network of Table 1's MobileNet-v2 rows.

It differs from `mobilenetv2` (mobilenetv2.py, torchvision's layout with the
small-image strides) in:

- ReLU, not ReLU6;
- every block has its 1x1 expand conv, the t=1 block too (in -> in channels);
- a stride-1 block whose input and output channels differ adds a 1x1 conv +
  BN projection shortcut (torchvision: no residual there); stride-1 blocks
  with equal channels add the identity, stride-2 blocks have no residual;
- stem: 3x3 conv stride 1, 32 channels, BN, ReLU; cfg (t, c, n, s)
  (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2)
  (6,320,1,1), the second stage at stride 1 for CIFAR; last 1x1 conv to
  1280 channels, BN, ReLU; pooling; Linear.

Pooling: adaptive average pooling to 1x1 where the released code has
avg_pool2d(4); a 32x32 (or 28x28) image reaches it as 4x4, so the two agree
there, and an 8x8 digit (1x1 there) still runs. Adapted as every architecture
here: `in_channels` (released: 3), width (every channel count
max(1, round(c * width)); expanded channels t x the block's input; the last
conv round(1280 * max(1, width)) as in MobileNetV2's paper and `mobilenetv2`).
Module names are the released ones (conv1, bn1, layers.<i>.conv1..bn3 and
.shortcut, conv2, bn2) but the head is `fc` (released: `linear`). Convs have
no bias, as released.

Only variant "standard". No ImageNet checkpoint exists: `model.init: imagenet`
is refused. Its `paper` init is PyTorch's default (the released code applies none).
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import Arch, register
from .variants import init_weights

# t (expansion), c (channels), n (repeats), s (stride of the first repeat): as released.
CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class Block(nn.Module):
    """Expand 1x1 + BN + ReLU, depthwise 3x3 + BN + ReLU, project 1x1 + BN (+ shortcut at stride 1)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        planes = expansion * cin
        self.conv1 = nn.Conv2d(cin, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Cifar(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, width: float = 1.0):
        super().__init__()
        ch = lambda c: max(1, round(c * width))  # noqa: E731
        cin = ch(32)
        self.conv1 = nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        blocks = []
        for t, c, n, s in CFG:
            for j in range(n):
                blocks.append(Block(cin, ch(c), t, s if j == 0 else 1))
                cin = ch(c)
        self.layers = nn.Sequential(*blocks)
        last = round(1280 * max(1.0, width))
        self.conv2 = nn.Conv2d(cin, last, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(self.layers(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


def mobilenetv2_cifar(*, num_classes: int, in_channels: int, image_size: int,
                      width: float = 1.0, variant: str = "standard") -> MobileNetV2Cifar:
    return MobileNetV2Cifar(num_classes=num_classes, in_channels=in_channels, width=width)


ARCH = register(Arch("mobilenetv2_cifar", mobilenetv2_cifar, ("standard",), stem_key="conv1.weight",
                     imagenet_file=""))
