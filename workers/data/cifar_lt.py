"""`cifar100_lt`: long-tailed CIFAR-100 (Cao et al. 2019, "LDAM"; the usual CIFAR-100-LT).

Class c (0..C-1) keeps n_c = int(n_max * f ** (c / (C - 1))) training images, where
f is the imbalance factor (n_min / n_max) and n_max the size of the largest class
(500 in the official CIFAR-100 training file); the test split is the official
balanced one. Training images per factor: 0.1 -> 19573, 0.05 -> 15907,
0.02 -> 12608, 0.01 -> 10847.

Which images: the first n_c of each class in file order. (LDAM-DRW's
IMBALANCECIFAR100 first shuffles each class with np.random.seed(0); the counts are
the same, the chosen images differ.)

The files are CIFAR-100's (`cifar-100-python/`), read, checked and downloaded by
cifar.py's reader, through load_dataset("cifar100"): every factor of a process
shares one parse. The factor is the dataset's parameter `imbalance` (the spec's
`imbalances` axis); without one, DEFAULT_IMBALANCE.
"""
from __future__ import annotations

import torch

from .base import DataError, DatasetInfo, Split, load_dataset, register
from .cifar import CIFAR100_FMT

IMBALANCE_FACTORS = (0.1, 0.05, 0.02, 0.01)  # the paper's grid
DEFAULT_IMBALANCE = 0.01


def _train_size(imbalance: float = DEFAULT_IMBALANCE) -> int:
    """Images of the long-tailed split: 500 per class at the head (CIFAR-100's training split)."""
    return sum(long_tail_counts(500, 100, imbalance))


# Normalisation: CIFAR-100's published training-set statistics (the long-tailed subset
# shifts them by well under 0.01, and every factor then shares one set of constants).
INFO = DatasetInfo(
    name="cifar100_lt", traits=("long_tail",), num_classes=100, channels=3, image_size=32,
    mean=CIFAR100_FMT.info.mean, std=CIFAR100_FMT.info.std, autoaugment_policy="cifar10",
    params=("imbalance",), test_size=10000,
    train_size_of=_train_size,
)


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """[n_0, ..., n_{C-1}] with n_c = int(n_max * imbalance ** (c / (C - 1)))."""
    if not 0.0 < imbalance <= 1.0:
        raise DataError(f"imbalance factor must be in (0, 1], got {imbalance}")
    if num_classes < 2:
        raise DataError(f"a long tail needs at least 2 classes, got {num_classes}")
    return [int(n_max * imbalance ** (c / (num_classes - 1))) for c in range(num_classes)]


def long_tail_indices(y: torch.Tensor, num_classes: int, imbalance: float) -> torch.Tensor:
    """int64 indices into y, ascending: the first n_c images of each class c in file order.

    n_max is the largest class count in y (500 for CIFAR-100). A class with fewer
    than its n_c images is an error: the tail would not have the requested shape.
    """
    y = torch.as_tensor(y).cpu()
    if y.ndim != 1 or len(y) == 0:
        raise DataError(f"labels must be a non-empty 1-D tensor, got shape {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(f"labels outside 0..{num_classes - 1}")
    have = torch.bincount(y, minlength=num_classes)
    want = long_tail_counts(int(have.max()), num_classes, imbalance)
    order = torch.sort(y, stable=True).indices  # grouped by class, file order within a class
    start = (torch.cumsum(have, 0) - have).tolist()
    keep = []
    for c, n in enumerate(want):
        if have[c] < n:
            raise DataError(f"class {c} has {int(have[c])} images, fewer than the {n} its long-tail count needs")
        keep.append(order[start[c]:start[c] + n])
    return torch.sort(torch.cat(keep)).values


def long_tail(train: Split, imbalance: float) -> Split:
    idx = long_tail_indices(train.y, INFO.num_classes, imbalance)
    return Split(x=train.x[idx].contiguous(), y=train.y[idx].contiguous())


@register(INFO)
def load(root: str, download: bool, imbalance: float = DEFAULT_IMBALANCE) -> tuple[Split, Split]:
    """(long-tailed train, balanced official test) of CIFAR-100 under `root`."""
    _, train, test = load_dataset("cifar100", root=root, download=download)
    return long_tail(train, imbalance), test
