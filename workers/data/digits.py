"""`digits`: scikit-learn's 1797 real 8x8 handwritten digits (ships with the package, offline).

It exists so laptops, CI and tests can run a real IMP lineage in seconds with no download.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from .base import DataError, DatasetInfo, Split, register

# mean/std of the train split below, on the 0..1 scale (tests recompute and compare).
INFO = DatasetInfo(
    name="digits", num_classes=10, channels=1, image_size=8, train_size=1198, test_size=599,
    mean=(0.3058,), std=(0.3762,), autoaugment_policy="imagenet",
    flips=(),  # mirrored glyphs are other glyphs
)


def fixed_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official-for-this-project train/test split; it must never change.

    Per class, a third (Python round of N_c/3) goes to test, drawn from a
    permutation by numpy's legacy RandomState(0), whose stream numpy guarantees
    stable across versions (torch.randperm makes no such promise).
    Result: 1198 train / 599 test images (test per class 59,61,59,61,60,61,60,60,58,60).
    """
    rng = np.random.RandomState(0)
    train, test = [], []
    for c in range(10):
        perm = rng.permutation(np.flatnonzero(y == c))
        n_test = round(len(perm) / 3)
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@register(INFO)
def load(root: str, download: bool) -> tuple[Split, Split]:
    del root, download  # bundled with scikit-learn
    # The very file sklearn.datasets.load_digits parses (65 columns: 64 pixels,
    # then the label), read without importing scikit-learn, which costs
    # seconds per trial process.
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'digits' ships with scikit-learn: pip install scikit-learn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float64)
    # Pixel values are 0..16 intensities; map them onto the usual uint8 scale.
    x = np.round(raw[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    y = raw[:, 64].astype(np.int64)
    train_idx, test_idx = fixed_split(y)

    def split(idx):
        return Split(x=torch.from_numpy(np.ascontiguousarray(x[idx])), y=torch.from_numpy(y[idx]))

    return split(train_idx), split(test_idx)
