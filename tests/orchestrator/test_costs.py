"""`plan`'s cost estimate: the registry's real split sizes, FLOPs of the trial's
own network, a throughput table from `bench --calibrate` or a named assumption."""
import json

import pytest

from orchestrator import costs
from orchestrator.config import load_config
from orchestrator.grid import cost_estimate, expand
from tests.helpers import ROOT, cli
from workers import data as D


def shipped(name):
    return expand(load_config(f"{ROOT}/experiments.yaml")["experiments"][name])


def lineage_images(trial, subset):
    t, p = trial.spec.train, trial.spec.prune
    return subset * (t.epochs + p.rounds * (t.epochs - p.rewind_epoch))


def test_imagenet_5pct_counts_64000_images_per_epoch(monkeypatch, tmp_path):
    monkeypatch.setenv("LTH_THROUGHPUT", str(tmp_path / "none.json"))
    trials = shipped("imagenet_5pct")
    assert len(trials) == 3  # one grid point, three seeds
    want = 3 * lineage_images(trials[0], 64 * 1000)  # 64 images per class x 1000 classes
    r = cli("plan", "-e", "imagenet_5pct", "--json", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    cost = json.loads(r.stdout)["cost"]
    assert abs(cost["train_images"] - want) / want < 0.05
    assert cost["source"] == "assumed" and "assumed" in cost["device"]
    # ImageNet-size images are costed at ImageNet-size speed, not CIFAR's.
    speeds = cost["images_per_s"]
    assert set(speeds) == {"resnet18@224"}
    cifar = cost_estimate(shipped("fig2_cifar10"))["images_per_s"]["resnet18@32"]
    assert cifar > 2 * speeds["resnet18@224"]
    text = cli("plan", "-e", "imagenet_5pct", cwd=ROOT).stdout
    assert f"{want:.3g} training images" in text and "device-hours on an assumed" in text


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "digits", "eurosat", "isic2018", "clamm", "imagenet"])
def test_subset_sizes_come_from_the_registry(name):
    info = D.dataset_info(name)
    assert D.train_size(name) == info.train_size > 0 and info.test_size > 0


def test_long_tail_size_follows_the_imbalance():
    from workers.data.cifar_lt import long_tail_counts
    assert D.train_size("cifar100_lt", imbalance=0.01) == sum(long_tail_counts(500, 100, 0.01)) == 10847
    assert D.train_size("cifar100_lt", imbalance=0.1) > D.train_size("cifar100_lt", imbalance=0.01)


def test_a_calibrated_table_is_used_and_its_device_named(tmp_path, monkeypatch):
    trials = shipped("methods_cifar10")
    assumed = costs.estimate(trials, table={})
    path = costs.write_table({"device": "cpu: Test CPU", "measured": "2026-12-02",
                              "flops_per_s": {"resnet18@32": 1e12}}, str(tmp_path / "t.json"))
    monkeypatch.setenv("LTH_THROUGHPUT", path)
    got = cost_estimate(trials)
    assert got["source"] == "calibrated" and got["device"].startswith("cpu: Test CPU (measured 2026-12-02")
    # 40x fewer FLOP/s than the assumed device: 40x the hours (same images).
    assert got["train_images"] == assumed["train_images"]
    assert got["device_hours"] == pytest.approx(assumed["device_hours"] * 40, rel=0.02)
    # A pair the table lacks gets the median of those it has.
    vgg = costs.estimate(shipped("table1_vgg16_cifar10"))
    assert vgg["source"] == "calibrated" and vgg["device_hours"] > 0


def test_narrower_and_smaller_networks_cost_fewer_flops():
    full = costs.forward_flops("resnet18", 32, 3, 10, 1.0)
    assert costs.forward_flops("resnet18", 32, 3, 10, 0.5) < full / 3
    assert costs.forward_flops("resnet50", 224, 3, 1000) > costs.forward_flops("resnet18", 224, 3, 1000)
    assert costs.forward_flops("vgg16", 224, 3, 10) > 10 * costs.forward_flops("vgg16", 32, 3, 10)


def test_forward_flops_equal_torchs_flop_counter_for_every_network():
    """The plan's own count (a torch-function counter: no dynamo import) against
    torch.utils.flop_counter, on every registered architecture and variant."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from workers.models import ARCHS, build_model
    checked = 0
    for arch in ARCHS:
        for variant in ARCHS.get(arch).variants:
            for size, channels in ((32, 3), (28, 1)):
                model = build_model(arch, num_classes=10, in_channels=channels, image_size=size, width=0.25,
                                    variant=variant).eval()
                counter = FlopCounterMode(display=False)
                with counter, torch.no_grad():
                    model(torch.zeros(1, channels, size, size))
                want = counter.get_total_flops()
                assert want > 0
                assert costs.forward_flops(arch, size, channels, 10, 0.25, variant) == want, (arch, variant, size)
                checked += 1
    assert checked >= 8
