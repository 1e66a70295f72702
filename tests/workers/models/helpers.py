"""Small networks the model tests build."""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from workers.models import build_model

ALL = ["resnet18", "resnet50", "vgg16", "mobilenetv2"]


TV = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
      "vgg16": torchvision.models.vgg16_bn, "mobilenetv2": torchvision.models.mobilenet_v2}


def tiny(arch, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(num_classes=10, in_channels=3, image_size=32, width=0.125) | kw
    return build_model(arch, **args)


def convs(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def randomized(sd, seed=0):
    """Every tensor replaced by random values, so a copy can't match by accident
    (BN's default ones/zeros would equal a fresh model's)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            r = torch.randn(v.shape, generator=g)
            out[k] = r.abs() + 0.5 if k.endswith("running_var") else r
        else:
            out[k] = torch.full_like(v, 7)
    return out
