"""Architectures (resnet18/50, vgg16, mobilenetv2), model variants (full_conv,
harmonic) and inits (random, imagenet, simclr). CPU; tiny widths except
where torchvision's full-width layout is the reference."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from workers.models import ARCH_VARIANTS, ARCHS, build_model
from workers.models.inits import IMAGENET_FILES, InitError, load_init, torchvision_key
from workers.models.variants import HarmonicConv2d, dct_basis
from workers.pruning import prunable_names

ALL = ["resnet18", "resnet50", "vgg16", "mobilenetv2"]
TV = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
      "vgg16": torchvision.models.vgg16_bn, "mobilenetv2": torchvision.models.mobilenet_v2}


def tiny(arch, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(num_classes=10, in_channels=3, image_size=32, width=0.125) | kw
    return build_model(arch, **args)


def convs(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


# --- architectures ---------------------------------------------------------------

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


# --- variants ---------------------------------------------------------------

def test_unknown_arch_and_variant_rejected():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet9000", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ValueError, match=r"unknown variant 'bogus'.*full_conv.*harmonic"):
        tiny("resnet18", variant="bogus")
    with pytest.raises(ValueError, match="not available"):
        tiny("mobilenetv2", variant="harmonic")
    assert {"standard", "full_conv", "harmonic"} <= set(ARCH_VARIANTS["resnet18"])


def test_standard_variant_is_the_default():
    a, b = tiny("resnet18", seed=3), tiny("resnet18", seed=3, variant="standard")
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


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


# --- inits -------------------------------------------------------------------

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


@pytest.mark.parametrize("arch", ALL)
def test_mapping_covers_torchvision_keys(arch):
    with torch.device("meta"):
        ours = build_model(arch, num_classes=10, in_channels=3, image_size=224)
        ref = TV[arch]()
    mapped = {torchvision_key(arch, k): k for k in ours.state_dict() if not k.startswith("fc.")}
    tv = ref.state_dict()
    body = {k for k in tv if not k.startswith(("fc.", "classifier."))}
    if arch == "vgg16":  # conv biases folded into the BN after them
        body -= {k for k in body if k.endswith(".bias") and tv[k.replace("bias", "weight")].dim() == 4}
    assert set(mapped) == body
    assert all(tv[t].shape == ours.state_dict()[k].shape for t, k in mapped.items())


@pytest.mark.parametrize("arch,image_size,in_channels,stem_new", [
    ("resnet18", 224, 3, False), ("resnet18", 32, 3, True), ("resnet18", 224, 1, True),
    ("resnet50", 32, 1, True)])
def test_imagenet_init_resnet(tmp_path, arch, image_size, in_channels, stem_new):
    tv = randomized(TV[arch](weights=None).state_dict())
    file = tmp_path / IMAGENET_FILES[arch]
    torch.save(tv, file)
    model = tiny(arch, width=1.0, image_size=image_size, in_channels=in_channels, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = load_init(model, "imagenet", arch=arch, path=str(file),
                    image_size=image_size, in_channels=in_channels)
    sd = model.state_dict()
    expect_new = {"fc.weight", "fc.bias"} | ({"stem.0.weight"} if stem_new else set())
    assert set(rep.new) == expect_new and set(rep.ignored) >= {"fc.weight", "fc.bias"}
    for k in sd:
        if k in expect_new:
            assert torch.equal(sd[k], before[k]) and not torch.equal(sd[k].flatten()[:10],
                                                                      tv[torchvision_key(arch, k)].flatten()[:10])
        else:
            assert torch.equal(sd[k], tv[torchvision_key(arch, k)]), k
    assert len(rep.loaded) == len(sd) - len(expect_new)
    assert torch.equal(sd["stem.1.running_var"], tv["bn1.running_var"])
    assert torch.equal(sd["layer2.0.shortcut.0.weight"], tv["layer2.0.downsample.0.weight"])
    # Model trains / runs after loading.
    assert model.eval()(torch.randn(2, in_channels, 32, 32)).shape == (2, 10)


def test_imagenet_init_vgg16_folds_biases_exactly(tmp_path):
    ref = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    tv = {f"features.{k}": v for k, v in randomized(ref.state_dict()).items()}
    tv["classifier.6.weight"] = torch.zeros(1000, 16)  # stand-in: ignored anyway
    torch.save(tv, tmp_path / IMAGENET_FILES["vgg16"])
    model = tiny("vgg16", width=1.0)
    rep = load_init(model, "imagenet", arch="vgg16", path=str(tmp_path), image_size=32, in_channels=3)
    assert rep.new == ["fc.weight", "fc.bias"] and len(rep.folded) == 13
    assert rep.ignored == ["classifier.6.weight"]
    sd = model.state_dict()
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        if k.endswith("running_mean"):
            conv = f"features.{int(k.split('.')[1]) - 1}.bias"
            assert torch.equal(v, tv[k] - tv[conv])
        else:
            assert torch.equal(v, tv[k]), k
    ref.load_state_dict({k[len("features."):]: v for k, v in tv.items() if k.startswith("features.")})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model.eval().features(x), ref.eval()(x)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4


@pytest.mark.parametrize("image_size,in_channels,stem_new", [(32, 3, False), (224, 1, True)])
def test_imagenet_init_mobilenetv2_from_hub_cache(tmp_path, monkeypatch, image_size, in_channels, stem_new):
    tv = randomized(torchvision.models.mobilenet_v2(weights=None).state_dict())
    (tmp_path / "checkpoints").mkdir()
    torch.save(tv, tmp_path / "checkpoints" / IMAGENET_FILES["mobilenetv2"])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = tiny("mobilenetv2", width=1.0, image_size=image_size, in_channels=in_channels)
    rep = load_init(model, "imagenet", arch="mobilenetv2", image_size=image_size,
                    in_channels=in_channels)
    assert rep.source == str(tmp_path / "checkpoints" / IMAGENET_FILES["mobilenetv2"])
    assert set(rep.ignored) == {"classifier.1.weight", "classifier.1.bias"}
    assert ("features.0.0.weight" in rep.new) == stem_new
    sd = model.state_dict()
    for k in sd:
        if k not in rep.new:
            assert torch.equal(sd[k], tv[k]), k


def test_imagenet_init_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = tiny("resnet18", width=1.0)
    expected = str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    with pytest.raises(InitError, match=re.escape(expected)):
        load_init(model, "imagenet", arch="resnet18", image_size=32, in_channels=3)
    with pytest.raises(InitError, match="not found"):
        load_init(model, "imagenet", arch="resnet18", path=str(tmp_path / "nope.pth"))
    # Width != 1 (or the harmonic variant) does not fit: clear error, model untouched.
    file = tmp_path / "resnet18-f37072fd.pth"
    torch.save(randomized(torchvision.models.resnet18(weights=None).state_dict()), file)
    for m in (tiny("resnet18"), tiny("resnet18", width=1.0, variant="harmonic")):
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(InitError, match="does not fit"):
            load_init(m, "imagenet", arch="resnet18", path=str(file))
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    bad = tmp_path / "garbage.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(InitError, match="cannot read"):
        load_init(model, "imagenet", arch="resnet18", path=str(bad))
    with pytest.raises(ValueError, match="unknown init"):
        load_init(model, "imagenet21k", arch="resnet18")
    assert load_init(model, "random", arch="resnet18").init == "random"


def test_full_conv_loads_imagenet(tmp_path):
    tv = randomized(torchvision.models.resnet18(weights=None).state_dict())
    torch.save(tv, tmp_path / "w.pth")
    model = tiny("resnet18", width=1.0, variant="full_conv", image_size=224)
    rep = load_init(model, "imagenet", arch="resnet18", path=str(tmp_path / "w.pth"))
    assert rep.new == ["fc.weight", "fc.bias"]
    assert torch.equal(model.state_dict()["stem.0.weight"], tv["conv1.weight"])


def test_simclr_init_project_names_with_prefixes(tmp_path):
    src = tiny("resnet18", seed=5)
    sd = {f"module.backbone.{k}": v for k, v in randomized(src.state_dict()).items()
          if not k.startswith("fc.")}
    sd["module.projector.0.weight"] = torch.randn(4, 4)
    torch.save({"state_dict": sd, "epoch": 100}, tmp_path / "simclr.pt")
    model = tiny("resnet18", seed=6)
    fc_before = model.fc.weight.clone()
    rep = load_init(model, "simclr", arch="resnet18", path=str(tmp_path / "simclr.pt"),
                    image_size=32, in_channels=3)
    assert rep.new == ["fc.weight", "fc.bias"] and rep.ignored == ["projector.0.weight"]
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, sd[f"module.backbone.{k}"]), k
    assert torch.equal(model.fc.weight, fc_before)


def test_simclr_init_torchvision_names_cifar_stem(tmp_path):
    """The usual CIFAR SimCLR ResNet: torchvision's resnet18 with a 3x3 stride-1
    conv1, keys under "encoder.": the 3x3 stem fits the small-image stem and is copied."""
    tvm = torchvision.models.resnet18(weights=None)
    tvm.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv = randomized(tvm.state_dict(), seed=1)
    torch.save({f"encoder.{k}": v for k, v in tv.items()}, tmp_path / "b.pth")
    model = tiny("resnet18", width=1.0, image_size=32)
    rep = load_init(model, "simclr", arch="resnet18", path=str(tmp_path / "b.pth"))
    assert rep.new == ["fc.weight", "fc.bias"]
    assert torch.equal(model.stem[0].weight, tv["conv1.weight"])
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, tv[torchvision_key("resnet18", k)]), k


def test_simclr_init_errors(tmp_path):
    model = tiny("resnet18")
    with pytest.raises(InitError, match="needs a path"):
        load_init(model, "simclr", arch="resnet18")
    with pytest.raises(InitError, match="not found"):
        load_init(model, "simclr", arch="resnet18", path=str(tmp_path / "x.pt"))
    torch.save({"state_dict": {"module.foo.weight": torch.zeros(1)}}, tmp_path / "y.pt")
    with pytest.raises(InitError, match="missing"):
        load_init(model, "simclr", arch="resnet18", path=str(tmp_path / "y.pt"))
