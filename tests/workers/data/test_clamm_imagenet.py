"""CLaMM (2016/2017 file lists) and ImageNet (ImageFolder) in their layouts."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.workers.data.helpers import WNIDS, check_split, one_line, reference, write_clamm, write_imagenet
from workers.data import DATASETS, DataError, clamm, folders, load_dataset


@pytest.mark.parametrize("release", ["2016", "2017"])
def test_clamm_loads_both_releases(tmp_path, release):
    written = write_clamm(tmp_path, release)
    train, test = DATASETS["clamm"](str(tmp_path), False)
    check_split(train, 12, 1, 224)
    check_split(test, 6, 1, 224)
    assert train.y.tolist() == written["train"][1] and test.y.tolist() == written["test"][1]
    folder = written["test"][0]
    assert np.array_equal(test.x[3].numpy(), reference(os.path.join(folder, "IRHT_P_test_000003.tif"), 224, "L"))


def test_clamm_label_values_and_layout_errors(tmp_path):
    with pytest.raises(DataError) as e:
        DATASETS["clamm"](str(tmp_path), True)
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "clamm", "CLaMM_Training_Data_Set", "@CLaMM-filelist.csv") in msg
    assert "clamm.irht.cnrs.fr" in msg

    written = write_clamm(tmp_path, "2016")
    path = os.path.join(written["train"][0], "@CLaMM-filelist.csv")
    good = open(path).read()
    for bad, match in ((good.replace(";1;", ";13;", 1), "outside 1..12"),
                       (good.replace(";1;", ";Gothic;", 1), "unknown script type"),
                       ("NAME;KIND\nfoo;bar\n", "no column of image file names"),
                       ("", "empty")):
        with open(path, "w") as f:
            f.write(bad)
        with pytest.raises(DataError, match=match) as e:
            DATASETS["clamm"](str(tmp_path), False)
        assert path in one_line(e)
    rows = clamm.read_labels(os.path.join(written["test"][0], "@CLaMM_task1.csv"))
    assert [c for _, c in rows] == [11, 0, 2, 9, 4, 5]  # "Uncial", "Caroline", "Half Uncial", "Southern Textualis", ...


def test_imagenet_loads_the_imagefolder_layout(tmp_path, monkeypatch):
    base = write_imagenet(tmp_path, val_classes=WNIDS[::2])
    os.makedirs(os.path.join(base, "train", ".hidden"))  # hidden folders are not classes
    monkeypatch.setattr(folders, "BUILD_CHUNK", 4)  # the cache is written in several chunks
    info, train, val = load_dataset("imagenet", root=str(tmp_path), download=False)
    assert info.num_classes == 1000
    check_split(train, 6, 3, 224)
    check_split(val, 2, 3, 224)
    assert train.y.tolist() == [0, 0, 1, 1, 2, 2] and val.y.tolist() == [0, 2]  # sorted wnids
    p = os.path.join(base, "val", WNIDS[2], f"{WNIDS[2]}_0.JPEG")
    assert np.array_equal(val.x[1].numpy(), reference(p, 224, "RGB"))
    for i, w in ((3, WNIDS[1]), (5, WNIDS[2])):  # both sides of a chunk boundary
        p = os.path.join(base, "train", w, f"{w}_{i % 2}.JPEG")
        assert np.array_equal(train.x[i].numpy(), reference(p, 224, "RGB"))
    assert os.path.isfile(os.path.join(base, ".lth-cache-224-train.npy"))


def test_imagenet_layout_errors(tmp_path):
    with pytest.raises(DataError) as e:
        DATASETS["imagenet"](str(tmp_path), True)
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "imagenet", "train") in msg and "image-net.org" in msg
    base = write_imagenet(tmp_path)
    os.makedirs(os.path.join(base, "val", "n09999999"))
    with pytest.raises(DataError, match="n09999999"):
        DATASETS["imagenet"](str(tmp_path), False)
    os.rmdir(os.path.join(base, "val", "n09999999"))
    for w in WNIDS:  # the official flat val folder
        src = os.path.join(base, "val", w, f"{w}_0.JPEG")
        os.rename(src, os.path.join(base, "val", f"ILSVRC2012_val_{w}.JPEG"))
        os.rmdir(os.path.join(base, "val", w))
    with pytest.raises(DataError, match="one folder per wnid"):
        DATASETS["imagenet"](str(tmp_path), False)
