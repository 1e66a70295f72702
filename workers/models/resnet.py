"""ResNet-18 for images of any size and channel count.

Small inputs (<= 64 px: CIFAR, digits) use the CIFAR stem (3x3 conv, stride
1, no max-pool) so an 8x8 or 32x32 image is not downsampled to nothing before
the first block; larger inputs use the ImageNet stem (7x7 stride 2 + max-pool).
Every conv has bias=False (a BN follows each), so the prunable set of the
paper -- all Conv2d weights -- is exactly the conv weights.
"""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        # 1x1 conv + BN only when the shape changes (projection shortcut).
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], *, num_classes: int, in_channels: int,
                 image_size: int, width: float = 1.0):
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.small_stem = image_size <= 64
        if self.small_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(cin, cout, stride if j == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # Adaptive pooling makes the head independent of the input size
        # (an 8x8 digit reaches layer4 as 1x1, a 224 image as 7x7).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

        # torchvision's init; nn.Linear keeps its own default reset.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(*, num_classes: int, in_channels: int, image_size: int,
             width: float = 1.0) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels,
                  image_size=image_size, width=width)
