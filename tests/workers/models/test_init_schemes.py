"""The weight initialisation schemes (workers/models/variants.py INIT_SCHEMES):
a freshly built network's convolutions, BatchNorms and Linear layers have the
mean and spread each scheme prescribes, per architecture, within sampling
error; so a refactor cannot silently change the recipe a study ran with."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workers import data as D
from workers.methods import trial_model
from workers.models import variants as V
from workers.spec import DataSpec, ModelSpec, TrialSpec

ARCHS = ["resnet18", "resnet50", "vgg16", "mobilenetv2"]


def build(arch: str, scheme: str, seed: int = 0) -> nn.Module:
    spec = TrialSpec(DataSpec("cifar10", fraction=0.01), model=ModelSpec(arch=arch, width=0.5, init_scheme=scheme),
                     seed=seed)
    return trial_model(spec, D.dataset_info("cifar10"))


def fans(w: torch.Tensor) -> tuple[int, int]:
    rf = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    return w.shape[1] * rf, w.shape[0] * rf


def expected(m: nn.Module, arch: str, scheme: str) -> dict:
    """{tensor name: (mean, std)} the scheme prescribes for module m."""
    paper_vgg = scheme == "paper" and arch == "vgg16"
    out = {}
    if isinstance(m, nn.Conv2d):
        fan_in, fan_out = fans(m.weight)
        kaiming = scheme == "torchvision" or paper_vgg
        out["weight"] = (0.0, math.sqrt(2.0 / fan_out) if kaiming else 1.0 / math.sqrt(3 * fan_in))
    elif isinstance(m, nn.Linear):
        fan_in, _ = fans(m.weight)
        out["weight"] = (0.0, 0.01 if paper_vgg else 1.0 / math.sqrt(3 * fan_in))
        out["bias"] = (0.0, 0.0 if paper_vgg else 1.0 / math.sqrt(3 * fan_in))
    elif isinstance(m, nn.BatchNorm2d):
        out["weight"], out["bias"] = (1.0, 0.0), (0.0, 0.0)
    return out


def check_scheme(model: nn.Module, arch: str, scheme: str) -> None:
    """Every conv/linear/BN tensor against its prescribed (mean, std): tensors
    of 512+ entries one by one (6 standard errors), and all of them pooled
    as z = w / std (mean 0 and std 1 to 1%). Raises AssertionError."""
    pooled = []
    for name, m in model.named_modules():
        for t, (mu, sd) in expected(m, arch, scheme).items():
            x = getattr(m, t).detach().double().flatten()
            where = f"{arch} {scheme} {name}.{t}"
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


def test_the_check_fails_when_torchvisions_init_is_applied_to_the_paper_scheme(monkeypatch):
    """The paper's ResNet keeps PyTorch's init: with torchvision's applied
    instead (the scheme ignored), the check fails (std ~2.4x too large)."""
    monkeypatch.setattr(V, "apply_init_scheme", lambda model, scheme, arch: None)
    import workers.models as M
    monkeypatch.setattr(M, "apply_init_scheme", lambda model, scheme, arch: None)
    with pytest.raises(AssertionError, match="std"):
        check_scheme(build("resnet18", "paper"), "resnet18", "paper")


def test_schemes_are_seeded_and_the_default_keeps_old_trial_ids():
    a, b = build("resnet18", "pytorch", seed=3), build("resnet18", "pytorch", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    s = TrialSpec(DataSpec("cifar10", fraction=0.01))
    assert "init_scheme" not in s.canonical().get("model", {})  # the default is left out of the id
    assert s.trial_id == TrialSpec(DataSpec("cifar10", fraction=0.01),
                                   model=ModelSpec(init_scheme="torchvision")).trial_id
    assert s.trial_id != TrialSpec(DataSpec("cifar10", fraction=0.01), model=ModelSpec(init_scheme="paper")).trial_id
