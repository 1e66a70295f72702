"""CIFAR-10/100 in torchvision's real pickle layout: round trip, errors, safe unpickling, one download."""
from __future__ import annotations

import dataclasses
import os
import pickle
import time

import numpy as np
import pytest
import torch

from tests.helpers import race
from tests.workers.data.helpers import write_cifar
from workers.data import DataError, cifar, dataset_info, load_dataset


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_real_format_round_trip(tmp_path, name):
    per_class = 20 if name == "cifar10" else 3
    (xtr, ytr), (xte, yte) = write_cifar(tmp_path, name, train_per_class=per_class, test_per_class=2)
    info, train, test = load_dataset(name, root=str(tmp_path), download=False)
    assert info == dataset_info(name) and info.channels == 3 and info.image_size == 32
    assert train.x.dtype == torch.uint8 and train.x.is_contiguous() and train.y.dtype == torch.int64
    assert torch.equal(train.x, torch.from_numpy(xtr)) and torch.equal(train.y, torch.from_numpy(ytr))
    assert torch.equal(test.x, torch.from_numpy(xte)) and torch.equal(test.y, torch.from_numpy(yte))
    # Decoded once per process: a second call returns the cached tensors.
    _, train2, _ = load_dataset(name, root=str(tmp_path), download=False)
    assert train2.x is train.x


def test_missing_folder_names_path_and_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in str(e.value)
    assert "cifar-10-python.tar.gz" in str(e.value)

    def offline(fmt, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar, "_download", offline)
    with pytest.raises(DataError, match="download failed.*network unreachable") as e:
        load_dataset("cifar100", root=str(tmp_path), download=True)
    assert os.path.join(str(tmp_path), "cifar-100-python") in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_one_file_is_missing(tmp_path):
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_truncated_pickle_is_a_data_error(tmp_path):
    write_cifar(tmp_path, "cifar10", train_per_class=4, test_per_class=1)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_wrong_shape_or_labels_is_a_data_error(tmp_path):
    write_cifar(tmp_path, "cifar100", train_per_class=1, test_per_class=1)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "fine_labels": [0, 1, 2, 3]}, f)
    with pytest.raises(DataError, match="uint8"):
        load_dataset("cifar100", root=str(tmp_path), download=False)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}, f)
    with pytest.raises(DataError, match="labels outside"):
        load_dataset("cifar100", root=str(tmp_path), download=False)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert not marker.exists()


def test_full_size_file_must_match_official_md5(tmp_path):
    # A file as large as the official one claims to be it; pretend the official batch is
    # one image so the small fixture file takes the md5 path (and fails it).
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    fmt = dataclasses.replace(cifar.CIFAR10_FMT, official_counts={**cifar.CIFAR10_FMT.official_counts,
                                                                   "data_batch_1": 1})
    path = str(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(DataError, match="md5"):
        cifar.read_batch(fmt, path)
    x, y = cifar.read_batch(cifar.CIFAR10_FMT, path)  # the real rule: small file, shape-checked
    assert x.shape == (4, 3, 32, 32) and y.dtype == np.int64


def test_concurrent_prepare_downloads_once(tmp_path, monkeypatch):
    calls = []

    def fake_download(fmt, root):
        calls.append(fmt.info.name)
        time.sleep(0.2)  # long enough for the other thread to reach the lock
        write_cifar(root, fmt.info.name, train_per_class=1, test_per_class=1)

    monkeypatch.setattr(cifar, "_download", fake_download)
    results = race(lambda: cifar.prepare(cifar.CIFAR10_FMT, str(tmp_path), download=True), 2)
    assert calls == ["cifar10"]
    assert results == [os.path.join(str(tmp_path), "cifar-10-batches-py")] * 2
