"""Pretrained inits: torchvision's ImageNet checkpoints and SimCLR backbones, key maps and errors."""
from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

from tests.workers.models.helpers import ALL, TV, randomized, tiny
from workers.models import ARCHS, build_model
from workers.models.inits import InitError, load_init, torchvision_key


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
    file = tmp_path / ARCHS[arch].imagenet_file
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
    torch.save(tv, tmp_path / ARCHS["vgg16"].imagenet_file)
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
    torch.save(tv, tmp_path / "checkpoints" / ARCHS["mobilenetv2"].imagenet_file)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = tiny("mobilenetv2", width=1.0, image_size=image_size, in_channels=in_channels)
    rep = load_init(model, "imagenet", arch="mobilenetv2", image_size=image_size,
                    in_channels=in_channels)
    assert rep.source == str(tmp_path / "checkpoints" / ARCHS["mobilenetv2"].imagenet_file)
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
