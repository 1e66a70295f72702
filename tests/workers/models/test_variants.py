"""Conv variants: full convolutions and harmonic (DCT) blocks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from torch import nn

from tests.workers.models.helpers import convs, tiny
from workers.models.variants import HarmonicConv2d, dct_basis
from workers.pruning import prunable_names


def test_full_conv_grows_maps():
    model = tiny("resnet18", variant="full_conv", image_size=32).eval()
    assert all(m.padding == (m.kernel_size[0] - 1,) * 2 for n, m in convs(model)
               if ".shortcut." not in n)
    sizes = {}
    hook = lambda name: lambda m, i, o: sizes.__setitem__(name, (i[0].shape[-1], o.shape[-1]))  # noqa: E731
    for name in ("stem.0", "layer1.0.conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.0.shortcut"):
        model.get_submodule(name).register_forward_hook(hook(name))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sizes["stem.0"] == (32, 34)
    assert sizes["layer1.0.conv1"] == (34, 36)         # H x W -> (H+2) x (W+2)
    assert sizes["layer1.0"] == (34, 38)               # stride-1 block: +4
    assert sizes["layer1.1"] == (38, 42)
    assert sizes["layer2.0"] == (42, (42 + 1) // 2 + 3)  # floor((H+1)/2) + 3 = 24
    assert sizes["layer2.0.shortcut"] == (42, 24)
    std = tiny("resnet18", image_size=32).eval()
    assert [p.shape for p in std.parameters()] == [p.shape for p in model.parameters()]


@pytest.mark.parametrize("arch,px", [("resnet18", 5), ("resnet18", 8), ("resnet18", 9),
                                     ("resnet50", 7)])
def test_full_conv_any_size(arch, px):
    model = tiny(arch, variant="full_conv", in_channels=1, image_size=px).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, px, px)).shape == (2, 10)


def test_full_conv_shortcut_is_aligned():
    """With conv1/conv2 reduced to a centred identity kernel and BN at identity,
    the main path is a shifted copy of the input: the padded shortcut must add
    it at the same place (an off-by-one pad would misalign the two)."""
    from workers.models.resnet import BasicBlock
    for stride, cin, cout in [(1, 2, 2), (2, 2, 3)]:
        blk = BasicBlock(cin, cout, stride, "full_conv").eval()
        with torch.no_grad():
            for conv in (blk.conv1, blk.conv2):
                conv.weight.zero_()
                for c in range(min(conv.in_channels, conv.out_channels)):
                    conv.weight[c, c, 1, 1] = 1.0
            proj = blk.shortcut[0] if len(blk.shortcut) and isinstance(blk.shortcut[0], nn.Conv2d) else None
            if proj is not None:
                proj.weight.zero_()
                for c in range(cin):
                    proj.weight[c, c] = 1.0
            x = torch.rand(1, cin, 9, 9) + 1  # > 0, so ReLU is the identity
            main = blk.bn2(blk.conv2(blk.relu(blk.bn1(blk.conv1(x)))))
            short = blk.shortcut(x)
        assert main.shape == short.shape
        bn_scale = (1 + 1e-5) ** -0.5  # fresh BN in eval: x / sqrt(1 + eps)
        assert torch.allclose(main[:, :min(cin, cout)], short[:, :min(cin, cout)] * bn_scale ** 2
                              / (1 if proj is None else bn_scale), atol=1e-5)


def test_harmonic_basis_is_fixed_orthonormal_dct_and_not_pruned():
    model = tiny("resnet18", variant="harmonic")
    harm = [(n, m) for n, m in model.named_modules() if isinstance(m, HarmonicConv2d)]
    assert len(harm) == 17  # stem + 16 block 3x3 convs
    params = dict(model.named_parameters())
    sd = model.state_dict()
    # Independent reference: scipy's orthonormal DCT-II matrix, outer products.
    d = scipy.fft.dct(torch.eye(3, dtype=torch.float64).numpy(), type=2, norm="ortho", axis=0)
    ref = torch.from_numpy(np.einsum("ui,vj->uvij", d, d)).reshape(9, 1, 3, 3).float()
    for n, m in harm:
        assert f"{n}.basis" in sd and f"{n}.basis" not in params
        assert not m.basis.requires_grad
        assert torch.allclose(m.basis, ref, atol=1e-6)
    flat = dct_basis().reshape(9, 9).double()
    assert torch.allclose(flat @ flat.T, torch.eye(9, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(dct_basis()[0], torch.full((1, 3, 3), 1 / 3))
    assert not any(id(p) == id(m.basis) for _, m in harm for p in model.parameters())
    # Prunable set: the learned 1x1 mixing convs (+ the plain 1x1 shortcuts), never a basis.
    names = prunable_names(model, "conv")
    assert {f"{n}.mix.weight" for n, _ in harm} | {n for n in names if ".shortcut." in n} == set(names)
    assert len(names) == 17 + 3 and not any("basis" in n for n in names)
    assert all(params[f"{n}.mix.weight"].shape == (m.out_channels, 9 * m.in_channels, 1, 1)
               for n, m in harm)
    # Training leaves the basis alone.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = {n: m.basis.clone() for n, m in harm}
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert all(torch.equal(m.basis, before[n]) for n, m in harm)


def test_harmonic_conv_equals_3x3_conv_in_dct_basis():
    torch.manual_seed(0)
    for stride, padding in [(1, 1), (2, 1), (1, 2)]:
        h = HarmonicConv2d(3, 5, stride=stride, padding=padding)
        x = torch.randn(2, 3, 9, 9)
        mix = h.mix.weight.reshape(5, 3, 9)
        w3 = torch.einsum("ock,kij->ocij", mix, h.basis[:, 0])
        assert torch.allclose(h(x), F.conv2d(x, w3, None, stride, padding), atol=1e-5)
    # Init: the equivalent 3x3 weights have the standard kaiming fan_out std.
    h = HarmonicConv2d(64, 64)
    assert abs(h.mix.weight.std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.05


def test_harmonic_variant_state_dict_roundtrip():
    a, b = tiny("resnet18", seed=1, variant="harmonic"), tiny("resnet18", seed=2, variant="harmonic")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
