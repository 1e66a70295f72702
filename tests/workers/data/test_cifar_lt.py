"""Long-tailed CIFAR-100: the counts formula and the real CIFAR-100 files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.workers.data.helpers import check_split, one_line, write_cifar100
from workers.data import DataError, cifar_lt, load_dataset

LT_TOTALS = {0.1: 19573, 0.05: 15907, 0.02: 12608, 0.01: 10847}  # the published CIFAR-100-LT sizes


@pytest.mark.parametrize("f", cifar_lt.IMBALANCE_FACTORS)
def test_long_tail_counts_follow_the_formula(f):
    assert cifar_lt.IMBALANCE_FACTORS == (0.1, 0.05, 0.02, 0.01)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(100).repeat(500)[torch.randperm(50000, generator=g)]  # balanced, shuffled file order
    idx = cifar_lt.long_tail_indices(y, 100, f)
    assert idx.dtype == torch.int64 and torch.equal(idx, torch.unique(idx))  # sorted, no repeats
    counts = torch.bincount(y[idx], minlength=100).tolist()
    assert counts == [int(500 * f ** (c / 99)) for c in range(100)]
    assert counts[0] == 500 and counts[-1] == int(500 * f) and sum(counts) == LT_TOTALS[f]
    assert counts == sorted(counts, reverse=True)
    for c in (0, 17, 99):  # the first n_c images of the class, in file order
        mine = idx[y[idx] == c]
        assert torch.equal(mine, torch.nonzero(y == c).flatten()[:counts[c]])


def test_long_tail_refuses_what_it_cannot_build():
    y = torch.arange(10).repeat(10)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match="imbalance"):
            cifar_lt.long_tail_indices(y, 10, bad)
    assert len(cifar_lt.long_tail_indices(y, 10, 1.0)) == 100
    short = torch.cat([torch.tensor([0]), torch.arange(1, 10).repeat(10)])  # class 0 is the head but has 1 image
    with pytest.raises(DataError, match="class 0 has 1"):
        cifar_lt.long_tail_indices(short, 10, 0.5)
    with pytest.raises(DataError, match="outside"):
        cifar_lt.long_tail_indices(torch.tensor([0, 10]), 10, 0.5)


def test_cifar100_lt_reads_the_real_cifar100_files(tmp_path):
    (xtr, ytr), (xte, yte) = write_cifar100(tmp_path, train_per_class=100, test_per_class=1)
    info, train, test = load_dataset("cifar100_lt", root=str(tmp_path), download=False)
    assert info.name == "cifar100_lt"
    want = [int(100 * 0.01 ** (c / 99)) for c in range(100)]  # n_max = 100 in this folder
    check_split(train, sum(want), 3, 32)
    assert torch.bincount(train.y, minlength=100).tolist() == want
    keep = np.sort(np.concatenate([np.flatnonzero(ytr == c)[:n] for c, n in enumerate(want)]))
    assert torch.equal(train.x, torch.from_numpy(xtr[keep])) and torch.equal(train.y, torch.from_numpy(ytr[keep]))
    assert torch.equal(test.x, torch.from_numpy(xte)) and torch.equal(test.y, torch.from_numpy(yte))  # balanced
    _, tr10, te10 = load_dataset("cifar100_lt", root=str(tmp_path), download=False, imbalance=0.1)
    assert torch.bincount(tr10.y, minlength=100).tolist() == [int(100 * 0.1 ** (c / 99)) for c in range(100)]
    assert torch.equal(te10.x, test.x)
    _, tr01, te01 = load_dataset("cifar100_lt", root=str(tmp_path), download=False, imbalance=0.01)
    assert torch.equal(tr01.x, train.x) and te01.x is te10.x  # every factor shares one parse of the files
    with pytest.raises(DataError, match="takes no imbalance"):
        load_dataset("cifar10", root=str(tmp_path), imbalance=0.1)


def test_cifar100_lt_missing_names_the_cifar100_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar100_lt", root=str(tmp_path), download=False)
    assert os.path.join(str(tmp_path), "cifar-100-python") in one_line(e)
