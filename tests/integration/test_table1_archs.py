"""Table 1's architecture entries of the shipped experiments.yaml, each run as
an IMP lineage at toy size on digits (8x8, one channel): the entry's own
arch, init and learning rate; only the data, the sizes and the length shrink.
The ResNet-50 entry starts from a torchvision-layout ImageNet file this test
writes (torchvision's own resnet50 state dict, random weights)."""
import copy
import os

import pytest
import torch
import yaml

from orchestrator.config import validate
from orchestrator.grid import expand
from tests.helpers import ROOT
from workers.lineage import run_lineage
from workers.models.registry import ARCHS
from workers.store import SweepStore

ENTRIES = {"table1_vgg16_cifar10": "vgg16_paper", "table1_mobilenetv2_cifar10": "mobilenetv2_cifar",
           "table1_resnet50_imagenet_init": "resnet50"}


def shipped() -> dict:
    with open(os.path.join(ROOT, "experiments.yaml")) as f:
        return yaml.safe_load(f)


def toy(doc: dict, name: str, init_dir: str) -> dict:
    """The entry on digits, one seed, one augmentation, 2 epochs x 2 rounds."""
    exp = copy.deepcopy(doc["experiments"][name])
    exp.update(datasets=["digits"], fractions=[0.05], augmentations=exp["augmentations"][:1], seeds=[0])
    exp["train"] = {**exp.get("train", {}), "epochs": 2, "batch_size": 50}
    exp["imp"] = {"rounds": 2, "rewind_epoch": 1}
    exp["resources"] = {"gpu": 0, "cpu": 1}
    # A pretrained init loads only at the full width (torchvision's shapes).
    if exp.get("model", {}).get("init", "random") == "random":
        exp["model"] = {**exp.get("model", {}), "width": 0.25}
    else:
        exp["runtime"] = {"init_path": init_dir}
    return validate({"defaults": doc["defaults"], "experiments": {name: exp}})["experiments"][name]


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_table1_entry_runs_an_imp_lineage_at_toy_size(tmp_path, name, caplog):
    import logging
    caplog.set_level(logging.INFO)
    doc = shipped()
    assert doc["experiments"][name]["arch"] == ENTRIES[name]
    init_dir = tmp_path / "weights"
    init_dir.mkdir()
    if doc["experiments"][name].get("model", {}).get("init") == "imagenet":
        import torchvision
        torch.manual_seed(0)
        tv = getattr(torchvision.models, ENTRIES[name])().state_dict()
        torch.save(tv, init_dir / ARCHS[ENTRIES[name]].imagenet_file)
    trials = expand(toy(doc, name, str(init_dir)))
    assert len(trials) == 1
    (trial,) = trials
    assert trial.spec.model.arch == ENTRIES[name]
    store = SweepStore(str(tmp_path / "runs"), "toy").lineage(trial.trial_id)
    rows = run_lineage(trial.spec, store, trial.options)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["density"] == 1.0 and abs(rows[2]["density"] - 0.64) < 0.01
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    if trial.spec.model.init == "imagenet":  # the file was read, every tensor but the new stem and head
        (line,) = {r.getMessage() for r in caplog.records if "init imagenet from" in r.getMessage()}
        assert str(init_dir / ARCHS["resnet50"].imagenet_file) in line and "tensors loaded" in line
