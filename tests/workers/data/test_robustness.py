"""CIFAR-10-C and CIFAR-10.2 in their official file formats."""
from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from tests.workers.data.helpers import check_split, md5_of, one_line, write_cifar10c
from workers.data import DataError, robustness


def test_cifar10c_blocks_by_severity(tmp_path):
    assert len(robustness.CIFAR10C_CORRUPTIONS) == len(set(robustness.CIFAR10C_CORRUPTIONS)) == 19
    assert {"speckle_noise", "gaussian_blur", "spatter", "saturate", "jpeg_compression"} <= set(
        robustness.CIFAR10C_CORRUPTIONS)
    folder, arrays, labels = write_cifar10c(tmp_path)
    sets = robustness.load_cifar10c(str(tmp_path), corruptions=["fog", "snow"])
    assert len(sets) == 10 and set(sets) == {(c, s) for c in ("fog", "snow") for s in range(1, 6)}
    for (c, s), split in sets.items():
        check_split(split, 4, 3, 32)
        block = arrays[c][(s - 1) * 4:s * 4]
        assert torch.equal(split.x, torch.from_numpy(block.transpose(0, 3, 1, 2).copy()))
        assert split.y.tolist() == labels[(s - 1) * 4:s * 4].tolist()
    some = robustness.load_cifar10c(str(tmp_path), corruptions=["snow"], severities=[5])
    assert list(some) == [("snow", 5)] and torch.equal(some["snow", 5].x, sets["snow", 5].x)
    with pytest.raises(KeyError):
        some["snow", 1]


def test_cifar10c_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        robustness.load_cifar10c(str(tmp_path))
    assert os.path.join(str(tmp_path), "CIFAR-10-C") in one_line(e) and "zenodo.org/record/2535967" in str(e.value)
    folder, _, _ = write_cifar10c(tmp_path)
    with pytest.raises(DataError) as e:  # all 19 asked for, two present
        robustness.load_cifar10c(str(tmp_path))
    assert os.path.join(folder, "gaussian_noise.npy") in one_line(e)
    with pytest.raises(DataError, match="unknown CIFAR-10-C corruption"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["rain"])
    with pytest.raises(DataError, match="1..5"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["fog"], severities=[6])

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(robustness, "fetch", offline)
    with pytest.raises(DataError, match="download failed.*network unreachable"):
        robustness.load_cifar10c(str(tmp_path), download=True)

    np.save(os.path.join(folder, "fog.npy"), np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"uint8 \[20, 32, 32, 3\]"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["fog"])
    with open(os.path.join(folder, "fog.npy"), "wb") as f:
        f.write(b"not a numpy file")
    with pytest.raises(DataError, match="not a readable .npy") as e:
        robustness.load_cifar10c(str(tmp_path), corruptions=["fog"])
    assert os.path.join(folder, "fog.npy") in one_line(e)
    np.save(os.path.join(folder, "labels.npy"), np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="5 severities"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["snow"])
    np.save(os.path.join(folder, "labels.npy"), np.full(20, 10, np.int64))
    with pytest.raises(DataError, match="outside 0..9"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["snow"])


def test_cifar102_reads_the_npz(tmp_path):
    with pytest.raises(DataError) as e:
        robustness.load_cifar102(str(tmp_path))
    path = os.path.join(str(tmp_path), "cifar-10.2", "cifar102_test.npz")
    assert path in one_line(e) and "github.com/modestyachts/cifar-10.2" in str(e.value)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.int64)
    os.makedirs(os.path.dirname(path))
    np.savez(path, images=images, labels=labels)
    split = robustness.load_cifar102(str(tmp_path))
    check_split(split, 7, 3, 32)
    assert torch.equal(split.x, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    assert split.y.tolist() == labels.tolist()

    np.savez(path, data=images, labels=labels)
    with pytest.raises(DataError, match="not a valid CIFAR-10.2 file"):
        robustness.load_cifar102(str(tmp_path))
    np.savez(path, images=images[..., 0], labels=labels)
    with pytest.raises(DataError, match=r"uint8 \[N, 32, 32, 3\]"):
        robustness.load_cifar102(str(tmp_path))
    np.savez(path, images=images, labels=labels[:3])
    with pytest.raises(DataError, match="labels"):
        robustness.load_cifar102(str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a valid CIFAR-10.2 file"):
        robustness.load_cifar102(str(tmp_path))
    os.remove(path)
    with open(os.path.join(os.path.dirname(path), "cifar102_test.npy"), "wb") as f:
        pickle.dump({"images": images, "labels": labels}, f)
    with pytest.raises(DataError, match="older pickled release"):
        robustness.load_cifar102(str(tmp_path))


def test_robustness_real_download_paths(tmp_path, http_dir, monkeypatch):
    served, url = http_dir
    src = tmp_path / "src"
    _, arrays, labels = write_cifar10c(src)
    with tarfile.open(served / "CIFAR-10-C.tar", "w") as t:  # the official archive: a plain tar of CIFAR-10-C/
        t.add(src / "CIFAR-10-C", arcname="CIFAR-10-C")
    monkeypatch.setattr(robustness, "CIFAR10C_TAR", (f"{url}/CIFAR-10-C.tar", "CIFAR-10-C.tar",
                                                      md5_of(served / "CIFAR-10-C.tar")))
    root = tmp_path / "data"
    sets = robustness.load_cifar10c(str(root), corruptions=["fog"], severities=[2], download=True)
    assert torch.equal(sets["fog", 2].x, torch.from_numpy(arrays["fog"][4:8].transpose(0, 3, 1, 2).copy()))

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.savez(served / "cifar102_test.npz", images=images, labels=np.array([1, 2, 3]))
    monkeypatch.setattr(robustness, "CIFAR102_RAW", f"{url}/cifar102_test.npz")
    split = robustness.load_cifar102(str(root), download=True)
    assert split.y.tolist() == [1, 2, 3] and os.path.isfile(root / "cifar-10.2" / "cifar102_test.npz")
