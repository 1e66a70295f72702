"""ResNet-18 (and the shared ResNet body of resnet50.py) for images of any
size and channel count.

Small inputs (<= 64 px: CIFAR, digits) use the CIFAR stem (3x3 conv, stride
1, no max-pool) so an 8x8 or 32x32 image is not downsampled to nothing before
the first block; larger inputs use the ImageNet stem (7x7 stride 2 + max-pool).
Every conv has bias=False (a BN follows each), so the prunable set of the
paper -- all Conv2d weights -- is exactly the conv weights.

`variant` (see variants.py) changes how the k x k convs are built:
"full_conv" pads every conv by k - 1 and pads the shortcuts to match
(`shortcut_pad`), "harmonic" swaps every 3x3 conv for a DCT + 1x1 block.
Module and state-dict names are the same in every variant except that a
harmonic conv `x` holds `x.basis` (buffer) and `x.mix.weight`.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import Arch, register
from .variants import VARIANTS, conv_kxk, init_weights, shortcut_pad


def make_shortcut(cin: int, cout: int, stride: int, pad: int) -> nn.Sequential:
    """Identity (empty Sequential) when the shape is kept, else a 1x1 conv +
    BN projection. `pad` > 0 (full_conv only) zero-pads the identity input, or
    is the 1x1 conv's own padding, so the sum lines up with the main path."""
    if stride != 1 or cin != cout:
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, pad, bias=False),
                             nn.BatchNorm2d(cout))
    return nn.Sequential(nn.ZeroPad2d(pad)) if pad else nn.Sequential()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, variant: str = "standard"):
        super().__init__()
        self.conv1 = conv_kxk(variant, cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv_kxk(variant, cout, cout, 3, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        pad = shortcut_pad(variant, [(3, stride), (3, 1)])
        self.shortcut = make_shortcut(cin, cout, stride, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], *, num_classes: int, in_channels: int,
                 image_size: int, width: float = 1.0, block: type = BasicBlock,
                 variant: str = "standard"):
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.small_stem = image_size <= 64
        self.variant = variant
        if self.small_stem:
            self.stem = nn.Sequential(
                conv_kxk(variant, in_channels, widths[0], 3, 1),
                nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                conv_kxk(variant, in_channels, widths[0], 7, 2),
                nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(block(cin, planes, stride if j == 0 else 1, variant))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # Adaptive pooling makes the head independent of the input size
        # (an 8x8 digit reaches layer4 as 1x1, a 224 image as 7x7).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(*, num_classes: int, in_channels: int, image_size: int,
             width: float = 1.0, variant: str = "standard") -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes=num_classes, in_channels=in_channels,
                  image_size=image_size, width=width, variant=variant)


# Names as torchvision's but stem.0/stem.1 for conv1/bn1 and `shortcut` for `downsample`.
RESNET_RENAMES = ((r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."), (r"\.shortcut\.", ".downsample."))
ARCH = register(Arch("resnet18", resnet18, tuple(VARIANTS), stem_key="stem.0.weight",
                     imagenet_file="resnet18-f37072fd.pth", renames=RESNET_RENAMES))
