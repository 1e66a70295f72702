"""The paper's released CIFAR networks as named architectures: `vgg16_paper`
and `mobilenetv2_cifar` against reference definitions written here from the
released code (VITA-Group/DataEfficientLTH, models/vgg.py `vgg16` and
models/mobilenet.py `MobileNetV2`, the latter kuangliu/pytorch-cifar's
models/mobilenetv2.py): the same layers, shapes and parameter count at width 1
for CIFAR-10, the same function given the same weights, and IMP's prunable set
every conv weight."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.workers.models.helpers import convs, tiny
from workers.models import ARCHS, build_model
from workers.models.inits import InitError, check_init_file, load_init
from workers.pruning import global_magnitude_prune, full_masks, prunable_names

NEW = ["vgg16_paper", "mobilenetv2_cifar"]

# --- the released definitions (the reference) ------------------------------------------

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
MBV2_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class RefVGG(nn.Module):
    """Released vgg16: conv3x3(bias) + BN + ReLU per entry, "M" max-pool 2/2, adaptive
    average pool to 1x1, Linear(512, n_cls)."""

    def __init__(self, n_cls=10):
        super().__init__()
        layers, c = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool, self.linear = nn.AdaptiveAvgPool2d((1, 1)), nn.Linear(512, n_cls)

    def forward(self, x):
        return self.linear(self.pool(self.features(x)).flatten(1))


class RefBlock(nn.Module):
    def __init__(self, cin, cout, t, stride):
        super().__init__()
        self.stride, p = stride, t * cin
        self.conv1, self.bn1 = nn.Conv2d(cin, p, 1, bias=False), nn.BatchNorm2d(p)
        self.conv2, self.bn2 = nn.Conv2d(p, p, 3, stride, 1, groups=p, bias=False), nn.BatchNorm2d(p)
        self.conv3, self.bn3 = nn.Conv2d(p, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class RefMobileNetV2(nn.Module):
    """Released MobileNetV2: stem conv3x3 s1 32, blocks per MBV2_CFG, conv1x1 320 -> 1280,
    avg_pool2d(4), Linear(1280, n_cls); ReLU throughout."""

    def __init__(self, n_cls=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32)
        blocks, c = [], 32
        for t, out, n, s in MBV2_CFG:
            for stride in [s] + [1] * (n - 1):
                blocks.append(RefBlock(c, out, t, stride))
                c = out
        self.layers = nn.Sequential(*blocks)
        self.conv2, self.bn2 = nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, n_cls)

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(self.layers(F.relu(self.bn1(self.conv1(x)))))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


REF = {"vgg16_paper": RefVGG, "mobilenetv2_cifar": RefMobileNetV2}


# --- the parameter counts by arithmetic from the cfgs ---------------------------------

def vgg16_count(n_cls=10) -> int:
    total, c = 0, 3
    for v in (v for v in VGG16_CFG if v != "M"):
        total += c * v * 9 + v + 2 * v  # weight, bias, BN affine
        c = v
    return total + 512 * n_cls + n_cls


def mbv2_count(n_cls=10) -> int:
    bn = lambda c: 2 * c  # noqa: E731
    total, c = 3 * 32 * 9 + bn(32), 32
    for t, out, n, s in MBV2_CFG:
        for j in range(n):
            p = t * c
            total += c * p + bn(p) + p * 9 + bn(p) + p * out + bn(out)
            if (s if j == 0 else 1) == 1 and c != out:
                total += c * out + bn(out)
            c = out
    return total + 320 * 1280 + bn(1280) + 1280 * n_cls + n_cls


def test_the_counts_by_arithmetic_are_the_released_networks():
    assert vgg16_count() == 14_728_266 == sum(p.numel() for p in RefVGG().parameters())
    assert mbv2_count() == 2_296_922 == sum(p.numel() for p in RefMobileNetV2().parameters())


@pytest.mark.parametrize("arch,count", [("vgg16_paper", 14_728_266), ("mobilenetv2_cifar", 2_296_922)])
def test_parameter_count_at_width_1_is_the_released_one(arch, count):
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == count
    # The project's other VGG-16 and MobileNetV2 are different networks, still registered.
    other = build_model(arch.split("_")[0], num_classes=10, in_channels=3, image_size=32)
    assert sum(p.numel() for p in other.parameters()) != count


def layers(model: nn.Module) -> list:
    """(type, parameter and buffer shapes, stride, padding, groups) of every leaf module with
    state or a spatial effect, in model order."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.MaxPool2d)):
            shapes = [tuple(t.shape) for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]
            geo = (m.stride, m.padding, m.groups) if isinstance(m, nn.Conv2d) else ()
            out.append((nn.MaxPool2d if isinstance(m, nn.MaxPool2d) else type(m), shapes, geo))
    return out


@pytest.mark.parametrize("arch", NEW)
def test_layers_and_state_dict_are_the_released_ones_at_width_1(arch):
    ours, ref = build_model(arch, num_classes=10, in_channels=3, image_size=32), REF[arch]()
    assert layers(ours) == layers(ref)
    # The same names but the head `fc` (released: `linear`): a released checkpoint loads with one rename.
    renamed = {k.replace("linear.", "fc.", 1) if k.startswith("linear.") else k: v.shape
               for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == renamed
    assert [n for n, _ in ours.state_dict().items()] == list(renamed)


@pytest.mark.parametrize("arch", NEW)
def test_the_same_weights_give_the_released_networks_function(arch):
    torch.manual_seed(0)
    ref = REF[arch]()
    with torch.no_grad():  # BN statistics away from identity, so every layer matters
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
    ours = build_model(arch, num_classes=10, in_channels=3, image_size=32)
    ours.load_state_dict({k.replace("linear.", "fc.") if k.startswith("linear.") else k: v
                          for k, v in ref.state_dict().items()})
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", NEW)
@pytest.mark.parametrize("cin,px", [(3, 32), (1, 28), (1, 8)])
def test_forward_and_backward_at_small_width(arch, cin, px):
    model = tiny(arch, in_channels=cin, image_size=px, width=0.25).train()
    out = model(torch.randn(2, cin, px, px))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", NEW)
def test_imps_prunable_set_is_every_conv_weight(arch):
    model = tiny(arch, width=0.25)
    names = prunable_names(model, "conv")
    assert names == [f"{n}.weight" for n, _ in convs(model)] and len(names) == len(convs(REF[arch]()))
    assert not any(n.startswith("fc.") or n.endswith(".bias") for n in names)
    masks = global_magnitude_prune(model, full_masks(model, names), 0.2)
    assert set(masks) == set(names)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.2 * total)


def test_vgg16_paper_has_conv_biases_and_four_pools():
    model = tiny("vgg16_paper")
    assert all(m.bias is not None for _, m in convs(model))
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    with torch.no_grad():
        assert model.eval().features(torch.randn(1, 3, 32, 32)).shape[-2:] == (2, 2)
        assert model.eval().features(torch.randn(1, 3, 8, 8)).shape[-2:] == (1, 1)


def test_mobilenetv2_cifar_blocks_as_released():
    model = build_model("mobilenetv2_cifar", num_classes=10, in_channels=3, image_size=32)
    first = model.layers[0]  # t=1: the expand conv is there (32 -> 32)
    assert tuple(first.conv1.weight.shape) == (32, 32, 1, 1)
    assert isinstance(first.shortcut[0], nn.Conv2d)  # stride 1, 32 -> 16: projection
    assert len(model.layers[2].shortcut) == 0  # stride 1, 24 -> 24: identity
    assert model.layers[1].conv2.stride == (1, 1)  # the CIFAR stride of stage (6, 24, 2, 1)
    assert not any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert model.conv1.stride == (1, 1) and model.conv1.out_channels == 32


@pytest.mark.parametrize("arch", NEW)
def test_width_scales_channels(arch):
    a, b = convs(tiny(arch, width=0.125)), convs(tiny(arch, width=0.25))
    assert [n for n, _ in a] == [n for n, _ in b]
    last = a[-1][0] if arch == "mobilenetv2_cifar" else None
    for (n, x), (_, y) in zip(a, b):
        if n == last:  # 1280 * max(1, width) output channels
            assert x.out_channels == y.out_channels == 1280
        else:
            assert y.out_channels == 2 * x.out_channels, n
    m = tiny(arch, width=1e-3, in_channels=1, image_size=8).eval()
    assert min(c.out_channels for _, c in convs(m)) == 1 and m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("arch", NEW)
def test_registered_standard_only_and_imagenet_init_refused(arch, tmp_path):
    assert ARCHS[arch].variants == ("standard",)
    with pytest.raises(ValueError, match="not available"):
        tiny(arch, variant="harmonic")
    with pytest.raises(InitError, match=f"no ImageNet checkpoint exists for {arch}"):
        check_init_file(arch, "imagenet", str(tmp_path))
    with pytest.raises(InitError, match=f"no ImageNet checkpoint exists for {arch}"):
        load_init(tiny(arch), "imagenet", arch=arch, path=str(tmp_path))
    stem = ARCHS[arch].stem_key
    assert stem == convs(tiny(arch))[0][0] + ".weight"
