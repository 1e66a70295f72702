"""The dataset registry, the offline digits, and where data lives."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tests.workers.data.helpers import write_cifar
from workers.data import DATASETS, DataError, dataset_info, load_dataset, make_augment, normalize
from workers.data.digits import fixed_split


def test_registry_and_unknown_names():
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "cifar100_lt", "eurosat", "isic2018", "clamm",
                             "imagenet"}
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("cifar10").autoaugment_policy == "cifar10"
    assert dataset_info("digits").autoaugment_policy == "imagenet"
    with pytest.raises(DataError, match="cifar10, cifar100, cifar100_lt, clamm, digits"):
        dataset_info("mnist")
    with pytest.raises(DataError, match="known"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="basic"):
        make_augment("mixup", dataset_info("cifar10"))


def test_digits_pinned():
    info, train, test = load_dataset("digits")
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, 8)
    assert train.x.shape == (1198, 1, 8, 8) and test.x.shape == (599, 1, 8, 8)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert train.x.is_contiguous() and test.x.is_contiguous()
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    assert torch.bincount(test.y).tolist() == [59, 61, 59, 61, 60, 61, 60, 60, 58, 60]
    assert torch.bincount(train.y).tolist() == [119, 121, 118, 122, 121, 121, 121, 119, 116, 120]
    # The split must never change: pin the exact test images.
    digest = hashlib.sha256(test.x.numpy().tobytes() + test.y.numpy().tobytes()).hexdigest()
    assert digest[:16] == DIGITS_TEST_SHA256_PREFIX
    # The hardcoded normalisation constants are the train split's.
    f = train.x.double() / 255
    assert abs(f.mean().item() - info.mean[0]) < 1e-4 and abs(f.std(unbiased=False).item() - info.std[0]) < 1e-4
    z = normalize(train.x, info)
    assert z.dtype == torch.float32 and z.device == train.x.device
    assert abs(z.mean().item()) < 1e-3 and abs(z.std().item() - 1) < 1e-3


DIGITS_TEST_SHA256_PREFIX = "bbb82fde88f0ff10"


def test_digits_split_is_disjoint_and_complete():
    y = np.repeat(np.arange(10), 30)
    tr, te = fixed_split(y)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 300
    assert np.bincount(y[te]).tolist() == [10] * 10


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    monkeypatch.setenv("LTH_DATA_ROOT", str(tmp_path))
    _, train, _ = load_dataset("cifar10", download=False)
    assert len(train) == 20


def test_registry_has_the_paper_datasets():
    expect = {"cifar100_lt": (100, 3, 32, "cifar10"), "eurosat": (10, 3, 64, "imagenet"),
              "isic2018": (7, 3, 224, "imagenet"), "clamm": (12, 1, 224, "imagenet"),
              "imagenet": (1000, 3, 224, "imagenet")}
    for name, (k, c, size, policy) in expect.items():
        info = dataset_info(name)
        assert name in DATASETS
        assert (info.num_classes, info.channels, info.image_size, info.autoaugment_policy) == (k, c, size, policy)
        assert len(info.mean) == len(info.std) == c and all(0 < s < 1 for s in info.std)
    assert dataset_info("imagenet").mean == dataset_info("isic2018").mean == (0.485, 0.456, 0.406)
    assert dataset_info("cifar100_lt").mean == dataset_info("cifar100").mean
