"""Architectures: the registry, shapes, stems, widths, parameter counts."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.workers.models.helpers import ALL, TV, convs, tiny
from workers.models import ARCHS, build_model
from workers.pruning import prunable_names


def test_registry():
    assert set(ALL) <= set(ARCHS)


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("cin,px", [(1, 8), (3, 32)])
def test_forward_shapes(arch, cin, px):
    model = tiny(arch, in_channels=cin, image_size=px)
    out = model.train()(torch.randn(2, cin, px, px))
    assert out.shape == (2, 10)
    if px == 8:  # trains: every parameter gets a gradient
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", ALL)
def test_head_is_fc_linear_and_never_prunable(arch):
    model = tiny(arch, num_classes=7)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 7
    names = prunable_names(model, "conv")
    assert not any(n.startswith("fc.") for n in names)
    assert set(names) == {f"{n}.weight" for n, _ in convs(model)}
    assert "fc.weight" in prunable_names(model, "conv+linear")
    # Conv biases off everywhere (a BN follows each conv).
    assert all(m.bias is None for _, m in convs(model))


@pytest.mark.parametrize("arch", ALL)
def test_width_scales_channels_and_params(arch):
    a, b = tiny(arch, width=0.125), tiny(arch, width=0.25)
    ca, cb = convs(a), convs(b)
    assert [n for n, _ in ca] == [n for n, _ in cb]
    stem = ca[0][0]
    last_mbv2 = ca[-1][0] if arch == "mobilenetv2" else None
    for (n, x), (_, y) in zip(ca, cb):
        ratio = y.weight.numel() / x.weight.numel()
        if n == last_mbv2:  # 1280 * max(1, width) output channels: fixed
            assert y.out_channels == x.out_channels == 1280 and ratio == 2
        elif n == stem or x.groups > 1:  # only one side of the weight scales
            assert y.out_channels == 2 * x.out_channels and ratio == 2
        else:
            assert y.out_channels == 2 * x.out_channels and ratio == 4, n
    assert b.fc.in_features == (1280 if arch == "mobilenetv2" else 2 * a.fc.in_features)
    # Min 1 channel: an absurdly narrow model still builds and runs.
    m = tiny(arch, width=1e-3, in_channels=1, image_size=8).eval()
    assert min(c.out_channels for _, c in convs(m)) == 1
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_full_width_param_counts_match_torchvision():
    with torch.device("meta"):
        for arch in ("resnet50", "mobilenetv2"):
            ours = build_model(arch, num_classes=1000, in_channels=3, image_size=224)
            ref = TV[arch]()
            assert sum(p.numel() for p in ours.parameters()) == \
                sum(p.numel() for p in ref.parameters()), arch
        # VGG-16: torchvision's features minus its 4224 conv biases, plus a 512 -> 10 fc.
        ours = build_model("vgg16", num_classes=10, in_channels=3, image_size=32)
        ref = torchvision.models.vgg16_bn()
    feat = sum(p.numel() for p in ref.features.parameters())
    assert sum(p.numel() for p in ours.parameters()) == feat - 4224 + 512 * 10 + 10


def test_stems_and_strides():
    r50 = tiny("resnet50", image_size=224)
    assert r50.stem[0].kernel_size == (7, 7) and isinstance(r50.stem[3], nn.MaxPool2d)
    assert tiny("resnet50", image_size=32).stem[0].kernel_size == (3, 3)
    small, big = tiny("mobilenetv2", image_size=32), tiny("mobilenetv2", image_size=224)
    assert small.features[0][0].stride == (1, 1) and big.features[0][0].stride == (2, 2)
    # First t=6 stage (features.2, c=24): stride 1 on small images, 2 on large.
    assert small.features[2].conv[1][0].stride == (1, 1)
    assert big.features[2].conv[1][0].stride == (2, 2)
    with torch.no_grad():
        assert small.eval().features(torch.randn(1, 3, 32, 32)).shape[-1] == 4
        assert big.eval().features(torch.randn(1, 3, 64, 64)).shape[-1] == 2


def test_vgg_pooling_skips_when_map_is_1px():
    model = tiny("vgg16", in_channels=1, image_size=8).eval()
    sizes, x = [], torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for layer in model.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                sizes.append(x.shape[-1])
    assert sizes == [4, 2, 1, 1, 1]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert tiny("vgg16").eval().features(x).shape[-2:] == (1, 1)


def test_unknown_arch_and_variant_rejected():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet9000", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ValueError, match=r"unknown variant 'bogus'.*full_conv.*harmonic"):
        tiny("resnet18", variant="bogus")
    with pytest.raises(ValueError, match="not available"):
        tiny("mobilenetv2", variant="harmonic")
    assert {"standard", "full_conv", "harmonic"} <= set(ARCHS["resnet18"].variants)


def test_standard_variant_is_the_default():
    a, b = tiny("resnet18", seed=3), tiny("resnet18", seed=3, variant="standard")
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("cin,px,small", [(1, 8, True), (3, 32, True), (3, 224, False)])
def test_resnet18_shapes_and_stem(cin, px, small):
    model = tiny("resnet18", in_channels=cin, image_size=px).eval()
    stem = model.stem[0]
    assert stem.in_channels == cin
    assert stem.kernel_size == ((3, 3) if small else (7, 7))
    assert stem.stride == ((1, 1) if small else (2, 2))
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem) == (not small)
    with torch.no_grad():
        out = model(torch.randn(2, cin, px, px))
    assert out.shape == (2, 10)


def test_resnet18_param_count_full_width():
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_width_multiplier_scales_channels():
    convs = lambda m: [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]
    half, eighth = convs(tiny("resnet18", width=0.5)), convs(tiny("resnet18", width=0.125))
    assert half[0] == 32 and max(half) == 256
    assert eighth[0] == 8 and max(eighth) == 64
    assert tiny("resnet18", width=0.125).fc.in_features == 64


def test_init_deterministic_under_seed_and_torchvision_style():
    a, b, c = tiny("resnet18", seed=1), tiny("resnet18", seed=1), tiny("resnet18", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["stem.0.weight"], sc["stem.0.weight"])
    # Conv biases absent; BN starts at identity.
    assert all(m.bias is None for m in a.modules() if isinstance(m, nn.Conv2d))
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0)
               for m in a.modules() if isinstance(m, nn.BatchNorm2d))
    # kaiming fan_out: std = sqrt(2 / (out_channels * k * k)) (loose check).
    w = a.layer4[0].conv2.weight
    expected = (2 / (w.shape[0] * 9)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.1


def test_unknown_arch_rejected():
    assert "resnet18" in ARCHS
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet9000", num_classes=10, in_channels=3, image_size=32)
