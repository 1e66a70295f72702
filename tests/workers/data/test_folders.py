"""The decode cache of folder datasets: reuse, rebuild, one decode under concurrency, disk space."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import race
from tests.workers.data.helpers import WNIDS, noise, one_line, write_eurosat, write_imagenet, write_isic
from workers.data import DATASETS, DataError, folders


def test_cache_is_reused_and_rebuilt_when_files_change(tmp_path, count_opens):
    base = write_imagenet(tmp_path)
    train, val = DATASETS["imagenet"](str(tmp_path), False)
    assert len(count_opens) == 9  # 6 train + 3 val, decoded once
    count_opens.allowed = False
    train2, val2 = DATASETS["imagenet"](str(tmp_path), False)
    assert torch.equal(train2.x, train.x) and torch.equal(val2.x, val.x) and torch.equal(val2.y, val.y)

    # A replaced image (new bytes, new mtime) rebuilds its split, and only that one.
    target = os.path.join(base, "train", WNIDS[1], f"{WNIDS[1]}_0.JPEG")
    Image.new("RGB", (250, 200), (255, 0, 0)).save(target, format="JPEG")
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="decoded although"):  # the stale cache is not used
        DATASETS["imagenet"](str(tmp_path), False)
    count_opens.allowed = True
    count_opens.clear()
    train3, val3 = DATASETS["imagenet"](str(tmp_path), False)
    assert len(count_opens) == 6  # train rebuilt, val reused
    assert not torch.equal(train3.x[2], train.x[2]) and torch.equal(train3.x[3], train.x[3])
    assert abs(train3.x[2, 0].float().mean().item() - 254) < 3  # the red image
    assert torch.equal(val3.x, val.x)

    # A file only touched (same bytes, newer mtime) counts as changed: the cache is not newer than it.
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    count_opens.clear()
    train3b, _ = DATASETS["imagenet"](str(tmp_path), False)
    assert len(count_opens) == 6 and torch.equal(train3b.x, train3.x)

    # An added image rebuilds too; so does a damaged cache file.
    noise(np.random.default_rng(5), 224, 224).save(os.path.join(base, "train", WNIDS[0], "zz.JPEG"), format="JPEG")
    count_opens.clear()
    train4, _ = DATASETS["imagenet"](str(tmp_path), False)
    assert len(train4) == 7 and train4.y.tolist() == [0, 0, 0, 1, 1, 2, 2] and len(count_opens) == 7
    npy = os.path.join(base, ".lth-cache-224-train.npy")
    with open(npy, "rb") as f:  # a damaged copy (a new file: truncating the mapped one in place would SIGBUS)
        half = f.read(os.path.getsize(npy) // 2)
    with open(npy + ".x", "wb") as f:
        f.write(half)
    os.replace(npy + ".x", npy)
    count_opens.clear()
    train5, _ = DATASETS["imagenet"](str(tmp_path), False)
    assert torch.equal(train5.x, train4.x) and len(count_opens) == 7


def test_concurrent_first_loads_decode_once(tmp_path, count_opens):
    write_isic(tmp_path)
    results = race(lambda: DATASETS["isic2018"](str(tmp_path), False), 3)
    assert len(results) == 3
    assert len(count_opens) == 15  # 8 + 7 images, each decoded by one thread only
    assert all(torch.equal(r[0].x, results[0][0].x) for r in results)


def test_cache_needs_disk_space(tmp_path, monkeypatch):
    write_isic(tmp_path)
    monkeypatch.setattr(folders.shutil, "disk_usage", lambda path: type("U", (), {"free": 1 << 20})())
    with pytest.raises(DataError, match="GiB free") as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert os.path.join(str(tmp_path), "isic2018") in one_line(e)


def test_read_only_folder_decodes_in_memory(tmp_path, monkeypatch):
    write_eurosat(tmp_path, per_class=1)
    monkeypatch.setattr(folders.os, "access", lambda path, mode: False)
    with pytest.warns(UserWarning, match="not writable"):
        train, test = DATASETS["eurosat"](str(tmp_path), False)
    assert len(train) + len(test) == 10
    assert not os.path.exists(os.path.join(str(tmp_path), "eurosat", ".lth-cache-64-all.npy"))
