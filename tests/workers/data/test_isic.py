"""ISIC 2018 Task 3 in its official layout: images and ground-truth CSVs, errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.workers.data.helpers import ISIC_HEADER, check_split, one_line, reference, write_isic
from workers.data import DATASETS, DataError, load_dataset


def test_isic2018_loads_the_official_layout(tmp_path):
    base = write_isic(tmp_path)
    info, train, test = load_dataset("isic2018", root=str(tmp_path), download=False)
    check_split(train, 8, 3, 224)
    check_split(test, 7, 3, 224)
    assert train.y.tolist() == [0, 1, 1, 2, 3, 4, 5, 6] and test.y.tolist() == [6, 5, 4, 3, 2, 1, 0]
    first = os.path.join(base, "ISIC2018_Task3_Training_Input", "ISIC_0024306.jpg")
    second = os.path.join(base, "ISIC2018_Task3_Training_Input", "ISIC_0024307.jpg")
    assert np.array_equal(train.x[0].numpy(), reference(first, 224, "RGB"))
    assert np.array_equal(train.x[1].numpy(), reference(second, 224, "RGB"))
    assert os.path.isfile(os.path.join(base, ".lth-cache-224-train.npy"))
    assert os.path.isfile(os.path.join(base, ".lth-cache-224-test.npy"))


@pytest.mark.parametrize("bad, match", [
    ("image,MEL,NV,BCC,AKIEC,BKL,DF\nISIC_0024306,1.0,0.0,0.0,0.0,0.0,0.0\n", "header"),
    (f"{ISIC_HEADER}\nISIC_0024306,0.0,0.5,0.5,0.0,0.0,0.0,0.0\n", "one-hot"),
    (f"{ISIC_HEADER}\nISIC_0024306,0.0,1.0,1.0,0.0,0.0,0.0,0.0\n", "one-hot"),
    (f"{ISIC_HEADER}\nISIC_0024306,x,1.0,0.0,0.0,0.0,0.0,0.0\n", "non-numeric"),
    (f"{ISIC_HEADER}\nISIC_0024306,0.0,1.0\n", "fields"),
    (f"{ISIC_HEADER}\n", "no rows"),
    (b"\xff\xfe\x00garbage\x80", "UTF-8"),
])
def test_isic2018_corrupt_ground_truth_is_a_data_error(tmp_path, bad, match):
    base = write_isic(tmp_path)
    path = os.path.join(base, "ISIC2018_Task3_Training_GroundTruth", "ISIC2018_Task3_Training_GroundTruth.csv")
    with open(path, "wb") as f:
        f.write(bad if isinstance(bad, bytes) else bad.encode())
    with pytest.raises(DataError, match=match) as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert path in one_line(e)


def test_isic2018_missing_data_and_missing_or_broken_images(tmp_path):
    with pytest.raises(DataError) as e:
        DATASETS["isic2018"](str(tmp_path), True)  # never downloads: registration-gated
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "isic2018", "ISIC2018_Task3_Training_Input") in msg
    assert "ISIC2018_Task3_Validation_GroundTruth.csv" in msg and "challenge.isic-archive.com/data/#2018" in msg

    base = write_isic(tmp_path)
    img = os.path.join(base, "ISIC2018_Task3_Validation_Input", "ISIC_0024316.jpg")
    os.remove(img)
    with pytest.raises(DataError, match="missing") as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert img in one_line(e)
    with open(img, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match="not a readable image") as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert img in one_line(e)
    assert not [f for f in os.listdir(base) if ".tmp-" in f]  # no scratch files left behind
