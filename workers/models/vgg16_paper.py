"""VGG-16 as the paper's released code defines it (VITA-Group/DataEfficientLTH,
models/vgg.py, `vgg16`), the network of Table 1's VGG-16 rows.

It differs from `vgg16` (vgg.py, torchvision's vgg16_bn layout) in two ways:

- Conv biases: every 3x3 conv has one (Conv2d(bias=True), then BN, ReLU), as
  released; a bias before a BN is cancelled by the BN's mean in the forward
  pass, but it is a parameter (4,224 of them at width 1), trained and
  weight-decayed, and it is not pruned (only conv weights are).
- Four max-pools, not five: cfg 64 64 M 128 128 M 256 256 256 M 512 512 512 M
  512 512 512, so a 32x32 image reaches the last three convs as 2x2, then
  adaptive average pooling to 1x1 and a single Linear `fc` (512 -> classes).

As released otherwise: 3x3 convs with padding 1, BatchNorm2d, ReLU, 2x2/2
max-pools. Adapted as every architecture here: `in_channels` (released: 3),
width (every channel count max(1, round(c * width)); the head takes the last
conv's channels), and a max-pool on a map already smaller than 2 px passes it
through (`MaxPoolIfLarge`: an 8x8 digit goes 8 -> 4 -> 2 -> 1 -> 1; at 28 and
32 px every pool runs, as released). Module names are the released ones
(`features.<i>`, `pool`) but the head is `fc` (released: `linear`).

Only variant "standard". No ImageNet checkpoint exists: `model.init: imagenet`
is refused. Its `paper` init is the released one (variants.py, recipe "vgg").
"""
from __future__ import annotations

from torch import nn

from .registry import Arch, register
from .variants import FeaturesNet
from .vgg import vgg_features

CFG16_PAPER = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
               512, 512, 512, "M", 512, 512, 512]


class VGGPaper(FeaturesNet):
    def __init__(self, cfg: list, *, num_classes: int, in_channels: int, width: float = 1.0):
        super().__init__()
        layers, cin = vgg_features(cfg, in_channels, width, lambda i, o: nn.Conv2d(i, o, 3, 1, 1, bias=True))
        self.finish(layers, cin, num_classes)


def vgg16_paper(*, num_classes: int, in_channels: int, image_size: int,
                width: float = 1.0, variant: str = "standard") -> VGGPaper:
    return VGGPaper(CFG16_PAPER, num_classes=num_classes, in_channels=in_channels, width=width)


ARCH = register(Arch("vgg16_paper", vgg16_paper, ("standard",), stem_key="features.0.weight",
                     imagenet_file=""))
