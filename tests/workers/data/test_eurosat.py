"""EuroSAT in its official layout: split, sizes, download path, errors."""
from __future__ import annotations

import hashlib
import os
import zipfile

import numpy as np
import pytest
import torch

from tests.workers.data.helpers import check_split, md5_of, noise, one_line, pil_rgb, write_eurosat
from workers.data import DATASETS, DataError, eurosat


@pytest.mark.parametrize("folder", ["2750", "EuroSAT_RGB"])
def test_eurosat_loads_the_official_layout(tmp_path, folder):
    base = write_eurosat(tmp_path, per_class=5, folder=folder)
    train, test = DATASETS["eurosat"](str(tmp_path), False)
    check_split(train, 40, 3, 64)
    check_split(test, 10, 3, 64)
    assert torch.bincount(train.y).tolist() == [4] * 10 and torch.bincount(test.y).tolist() == [1] * 10
    paths, labels = eurosat.listing(base)
    tr, te = eurosat.fixed_split(np.asarray(labels))
    assert os.path.basename(paths[0]) == "AnnualCrop_1.jpg" and labels[-1] == 9  # SeaLake
    assert torch.equal(test.x, torch.from_numpy(np.stack([pil_rgb(paths[i]) for i in te])))
    assert torch.equal(train.x, torch.from_numpy(np.stack([pil_rgb(paths[i]) for i in tr])))
    assert os.path.isfile(os.path.join(str(tmp_path), "eurosat", ".lth-cache-64-all.npy"))


def test_eurosat_split_is_fixed_stratified_80_20():
    sizes = [3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000]  # the real class sizes
    y = np.repeat(np.arange(10), sizes)
    tr, te = eurosat.fixed_split(y)
    assert (len(tr), len(te)) == (21600, 5400) and len(np.intersect1d(tr, te)) == 0
    assert np.bincount(y[te]).tolist() == [600, 600, 600, 500, 500, 400, 500, 600, 500, 600]
    assert hashlib.sha256(te.astype(np.int64).tobytes()).hexdigest()[:16] == "1baedde04344591b"  # never changes


def test_eurosat_other_sizes_are_resized(tmp_path):
    base = write_eurosat(tmp_path, per_class=2)
    noise(np.random.default_rng(1), 80, 70).save(os.path.join(base, "Forest", "Forest_3.jpg"))
    train, test = DATASETS["eurosat"](str(tmp_path), False)
    assert len(train) + len(test) == 21 and train.x.shape[1:] == (3, 64, 64)


def test_eurosat_missing_download_and_bad_layout(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        DATASETS["eurosat"](str(tmp_path), False)
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "eurosat", "2750") in msg and "madm.dfki.de/files/sentinel/EuroSAT.zip" in msg

    def offline(root):
        raise OSError("network unreachable")

    monkeypatch.setattr(eurosat, "_download", offline)
    with pytest.raises(DataError, match="download failed.*network unreachable"):
        DATASETS["eurosat"](str(tmp_path), True)

    calls = []

    def fake(root):  # what the real download leaves behind
        calls.append(root)
        write_eurosat(root, per_class=1)

    monkeypatch.setattr(eurosat, "_download", fake)
    train, test = DATASETS["eurosat"](str(tmp_path), True)
    assert calls == [str(tmp_path)] and len(train) + len(test) == 10

    classes = os.path.join(str(tmp_path), "eurosat", "2750")
    os.rename(os.path.join(classes, "River"), os.path.join(classes, "Rivers"))
    with pytest.raises(DataError, match="unexpected Rivers"):
        DATASETS["eurosat"](str(tmp_path), False)


def test_eurosat_real_download_path(tmp_path, http_dir, monkeypatch):
    served, url = http_dir
    src = write_eurosat(tmp_path / "src", per_class=1)  # .../eurosat/2750, zipped as the official archive is
    with zipfile.ZipFile(served / "EuroSAT.zip", "w") as z:
        for dirpath, _, files in os.walk(src):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, os.path.dirname(src)))
    monkeypatch.setattr(eurosat, "URLS", (f"{url}/gone/EuroSAT.zip", f"{url}/EuroSAT.zip"))  # mirror fallback
    monkeypatch.setattr(eurosat, "ZIP_MD5", md5_of(served / "EuroSAT.zip"))
    root = tmp_path / "data"
    train, test = DATASETS["eurosat"](str(root), True)
    assert len(train) + len(test) == 10 and sorted(os.listdir(root / "eurosat" / "2750")) == sorted(eurosat.CLASSES)
    assert not [f for f in os.listdir(root / "eurosat") if f.endswith(".partial")]
    monkeypatch.setattr(eurosat, "ZIP_MD5", "0" * 32)  # a corrupted archive is refused
    with pytest.raises(DataError, match="download failed"):
        DATASETS["eurosat"](str(tmp_path / "other"), True)
    assert not (tmp_path / "other" / "eurosat" / "2750").exists()
