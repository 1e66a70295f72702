"""The weight initialisation schemes (workers/models/variants.py INIT_SCHEMES):
a freshly built network's convolutions, BatchNorms and Linear layers have the
mean and spread each scheme prescribes, per architecture and conv variant,
within sampling error; so a refactor cannot silently change the recipe a
study ran with.

`paper` is the released code's init (VITA-Group/DataEfficientLTH, models/),
written out here from that code, not from variants.py:
  resnet.py, mobilenet.py (standard ResNet, MobileNetV2): none, PyTorch's defaults;
  fresnet.py, hresnet.py (methods full_conv, harmonic): every Conv2d Kaiming-normal
    fan_out (relu), BatchNorm at identity, Linear at PyTorch's default; the
    Harm2d weights Kaiming-normal fan_out of their own shapes, (out, in, 9, 1, 1)
    in a block, (out, in * 9, 1, 1) in the stem (use_bn=True);
  vgg.py: Kaiming-normal fan_out convs with zero biases, BatchNorm at
    identity, Linear N(0, 0.01) with zero bias."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workers import data as D
from workers.methods import trial_model
from workers.models import variants as V
from workers.spec import DataSpec, ModelSpec, PruneSpec, TrialSpec

ARCHS = ["resnet18", "resnet50", "vgg16", "mobilenetv2", "vgg16_paper", "mobilenetv2_cifar"]
# The released code's recipe per (architecture, variant) the paper studies.
PAPER = {("resnet18", "standard"): "default", ("resnet18", "full_conv"): "kaiming",
         ("resnet18", "harmonic"): "kaiming", ("resnet50", "standard"): "default",
         ("vgg16", "standard"): "vgg", ("vgg16_paper", "standard"): "vgg",
         ("mobilenetv2", "standard"): "default", ("mobilenetv2_cifar", "standard"): "default"}
METHOD = {"standard": "imp", "full_conv": "full_conv", "harmonic": "harmonic"}


def build(arch: str, scheme: str, seed: int = 0, variant: str = "standard", width: float = 0.5) -> nn.Module:
    spec = TrialSpec(DataSpec("cifar10", fraction=0.01),
                     model=ModelSpec(arch=arch, width=width, init_scheme=scheme),
                     prune=PruneSpec(method=METHOD[variant]), seed=seed)
    return trial_model(spec, D.dataset_info("cifar10"))


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape, as torch.nn.init computes them."""
    return nn.init._calculate_fan_in_and_fan_out(torch.empty(shape, device="meta"))


def kaiming(shape) -> float:
    return math.sqrt(2.0 / fans(shape)[1])


def default(shape) -> float:
    """PyTorch's reset: U(+-1/sqrt(fan_in)) for a weight and its bias."""
    return 1.0 / math.sqrt(3 * fans(shape)[0])


def expected(name: str, m: nn.Module, recipe: str) -> dict:
    """{tensor path: (mean, std)} that `recipe` prescribes for module m, one of
    "torchvision", "default" (PyTorch's reset), "kaiming" (fresnet/hresnet), "vgg"."""
    out = {}
    if isinstance(m, V.HarmonicConv2d):
        o, i = m.out_channels, m.in_channels
        if recipe == "default":
            sd = default(m.mix.weight.shape)
        elif recipe == "torchvision":  # the mix as the equivalent 3x3 conv: sqrt(2 / (9 out))
            sd = kaiming((o, i, 3, 3))
        else:  # the released Harm2d: its tensor's own fan_out
            sd = kaiming((o, i * 9, 1, 1) if name == "stem.0" else (o, i, 9, 1, 1))
        out["mix.weight"] = (0.0, sd)
    elif isinstance(m, nn.Conv2d):
        sd = default(m.weight.shape) if recipe == "default" else kaiming(m.weight.shape)
        out["weight"] = (0.0, sd)
        if m.bias is not None:
            out["bias"] = (0.0, sd if recipe == "default" else 0.0)
    elif isinstance(m, nn.Linear):
        sd = default(m.weight.shape)
        out["weight"] = (0.0, 0.01 if recipe == "vgg" else sd)
        out["bias"] = (0.0, 0.0 if recipe == "vgg" else sd)
    elif isinstance(m, nn.BatchNorm2d):
        out["weight"], out["bias"] = (1.0, 0.0), (0.0, 0.0)
    return out


def recipe_of(scheme: str, arch: str, variant: str) -> str:
    return {"torchvision": "torchvision", "pytorch": "default"}.get(scheme) or PAPER[(arch, variant)]


def check_scheme(model: nn.Module, arch: str, scheme: str, variant: str = "standard") -> None:
    """Every conv/linear/BN tensor against its prescribed (mean, std): tensors
    of 512+ entries one by one, and all of them pooled as z = w / std (mean 0
    and std 1 to 1%). Per tensor of n i.i.d. entries the sample mean has
    standard error std / sqrt(n) and the sample std a relative standard error
    sqrt((kurtosis - 1) / (4 n)): 0.71 / sqrt(n) for a Gaussian (kurtosis 3),
    0.45 / sqrt(n) for a uniform (1.8); both are allowed 6 of them (0.26 and
    0.19 relative at n = 512, 0.02 at n = 73,728, a 3x3 conv 256 -> 32): a
    two-sided miss has probability ~2e-9 per tensor. Raises AssertionError."""
    recipe = recipe_of(scheme, arch, variant)
    mixes = {id(m.mix) for m in model.modules() if isinstance(m, V.HarmonicConv2d)}
    pooled = []
    for name, m in model.named_modules():
        if id(m) in mixes:
            continue  # checked with its HarmonicConv2d
        for t, (mu, sd) in expected(name, m, recipe).items():
            x = m.get_parameter(t).detach().double().flatten()
            where = f"{arch}/{variant} {scheme} {name}.{t}"
            if sd == 0:
                assert torch.all(x == mu), where
                continue
            n = x.numel()
            if n >= 512:
                assert abs(float(x.mean()) - mu) <= 6 * sd / math.sqrt(n), f"{where}: mean {float(x.mean()):.4g}"
                rel = float(x.std()) / sd - 1
                assert abs(rel) <= 6 * 0.71 / math.sqrt(n), f"{where}: std {float(x.std()):.4g} vs {sd:.4g}"
            pooled.append((x - mu) / sd)
    z = torch.cat(pooled)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01, (arch, scheme, float(z.std()))


@pytest.mark.parametrize("scheme", V.INIT_SCHEMES)
@pytest.mark.parametrize("arch", ARCHS)
def test_a_fresh_network_has_its_schemes_statistics(arch, scheme):
    check_scheme(build(arch, scheme), arch, scheme)


@pytest.mark.parametrize("arch,variant", [("resnet18", "full_conv"), ("resnet18", "harmonic")])
@pytest.mark.parametrize("scheme", V.INIT_SCHEMES)
def test_the_full_conv_and_harmonic_networks_have_their_schemes_statistics(arch, variant, scheme):
    check_scheme(build(arch, scheme, variant=variant), arch, scheme, variant)


@pytest.mark.parametrize("arch,variant", sorted(k for k in PAPER if k[0] != "resnet50"))
def test_the_paper_scheme_is_the_released_init_at_full_width(arch, variant):
    """Every (CIFAR architecture, variant) the paper studies, at width 1 as
    released (one seed; every tensor of 512+ entries checked on its own)."""
    check_scheme(build(arch, "paper", variant=variant, width=1.0), arch, "paper", variant)


def test_the_harmonic_stem_is_initialised_as_the_released_use_bn_stem():
    """Harmonic ResNet-18's stem mix (64, 27, 1, 1): std sqrt(2 / 64), three
    times its blocks' sqrt(2 / (9 out)); shortcuts Kaiming as 1x1 convs."""
    model = build("resnet18", "paper", variant="harmonic", width=1.0)
    stem, block = model.stem[0], model.layer1[0].conv1
    assert isinstance(stem, V.HarmonicConv2d) and tuple(stem.mix.weight.shape) == (64, 27, 1, 1)
    assert abs(float(stem.mix.weight.detach().std()) / math.sqrt(2 / 64) - 1) < 6 * 0.71 / math.sqrt(64 * 27)
    assert abs(float(block.mix.weight.detach().std()) / math.sqrt(2 / (9 * 64)) - 1) < 6 * 0.71 / math.sqrt(64 * 576)


def test_the_check_fails_when_torchvisions_init_is_applied_to_the_paper_scheme(monkeypatch):
    """The paper's ResNet keeps PyTorch's init: with torchvision's applied
    instead (the scheme ignored), the check fails (std ~2.4x too large)."""
    monkeypatch.setattr(V, "apply_init_scheme", lambda *a: None)
    import workers.models as M
    monkeypatch.setattr(M, "apply_init_scheme", lambda *a: None)
    with pytest.raises(AssertionError, match="std"):
        check_scheme(build("resnet18", "paper"), "resnet18", "paper")


@pytest.mark.parametrize("variant,scheme,where", [("full_conv", "pytorch", "stem.0.weight"),
                                                  ("harmonic", "torchvision", "stem.0.mix.weight")])
def test_the_check_sees_the_wrong_recipe_for_full_conv_and_harmonic(variant, scheme, where):
    """fresnet/hresnet's init is not PyTorch's default (convs ~2.4x smaller),
    nor torchvision's for the harmonic stem (its mix 3x too small)."""
    with pytest.raises(AssertionError, match=rf"{where}: std"):
        check_scheme(build("resnet18", scheme, variant=variant), "resnet18", "paper", variant)


def test_the_recipe_depends_on_the_architecture_and_the_variant():
    assert [V.paper_recipe("resnet18", v) for v in ("standard", "full_conv", "harmonic")] == \
        ["default", "kaiming", "kaiming"]
    assert V.paper_recipe("vgg16_paper") == V.paper_recipe("vgg16") == "vgg"
    assert V.paper_recipe("mobilenetv2_cifar") == V.paper_recipe("mobilenetv2") == "default"


def test_schemes_are_seeded_and_the_default_keeps_old_trial_ids():
    a, b = build("resnet18", "pytorch", seed=3), build("resnet18", "pytorch", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    s = TrialSpec(DataSpec("cifar10", fraction=0.01))
    assert "init_scheme" not in s.canonical().get("model", {})  # the default is left out of the id
    assert s.trial_id == TrialSpec(DataSpec("cifar10", fraction=0.01),
                                   model=ModelSpec(init_scheme="torchvision")).trial_id
    assert s.trial_id != TrialSpec(DataSpec("cifar10", fraction=0.01), model=ModelSpec(init_scheme="paper")).trial_id
