"""The training subset and the held-out validation images: counts, seeds, independence."""
from __future__ import annotations

import pytest
import torch

from workers.data import DataError, held_out_per_class, stratified_split


def _labels():
    counts = [50, 30, 20]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(123))]


def test_split_per_class_counts_fraction():
    y = _labels()
    tr, va = stratified_split(y, fraction=0.1, images_per_class=None, val_per_class=4, seed=0)
    assert tr.dtype == torch.int64 and va.dtype == torch.int64
    assert torch.equal(tr, tr.sort().values) and torch.equal(va, va.sort().values)
    assert torch.bincount(y[tr], minlength=3).tolist() == [5, 3, 2]
    assert torch.bincount(y[va], minlength=3).tolist() == [4, 4, 4]  # the budget is per class
    assert held_out_per_class(y[va], 3) == 4
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    # at least one image per class; validation clipped to what is left
    tr, va = stratified_split(y, fraction=0.001, images_per_class=None, val_per_class=4, seed=0)
    assert torch.bincount(y[tr], minlength=3).tolist() == [1, 1, 1]
    tr, va = stratified_split(y, fraction=0.9, images_per_class=None, val_per_class=4, seed=0)
    assert torch.bincount(y[tr], minlength=3).tolist() == [45, 27, 18]
    assert torch.bincount(y[va], minlength=3).tolist() == [4, 3, 2] and held_out_per_class(y[va], 3) == 2


def test_split_legacy_fraction_rule():
    """Lineages begun before the per-class budget keep their 10%-of-each-class images."""
    y = _labels()
    tr, va = stratified_split(y, fraction=0.1, images_per_class=None, val_fraction=0.2, seed=0)
    assert torch.bincount(y[va], minlength=3).tolist() == [10, 6, 4]
    new_tr, _ = stratified_split(y, fraction=0.1, images_per_class=None, val_per_class=50, seed=0)
    assert torch.equal(tr, new_tr)


def test_split_images_per_class():
    y = _labels()
    tr, va = stratified_split(y, fraction=None, images_per_class=4, val_per_class=3, seed=1)
    assert torch.bincount(y[tr], minlength=3).tolist() == [4, 4, 4]
    assert torch.bincount(y[va], minlength=3).tolist() == [3, 3, 3]
    with pytest.raises(DataError, match="class 2 has 20"):
        stratified_split(y, fraction=None, images_per_class=25, val_per_class=3, seed=1)
    with pytest.raises(DataError, match="exactly one"):
        stratified_split(y, fraction=0.1, images_per_class=4, val_per_class=3, seed=1)


def test_split_seeded_and_subset_independent_of_validation():
    y = _labels()
    kw = dict(fraction=0.2, images_per_class=None, seed=7)
    a_tr, a_va = stratified_split(y, val_per_class=2, **kw)
    b_tr, b_va = stratified_split(y, val_per_class=2, **kw)
    assert torch.equal(a_tr, b_tr) and torch.equal(a_va, b_va)
    c_tr, _ = stratified_split(y, val_per_class=2, fraction=0.2, images_per_class=None, seed=8)
    assert not torch.equal(a_tr, c_tr)
    d_tr, d_va = stratified_split(y, val_per_class=5, **kw)
    e_tr, e_va = stratified_split(y, val_per_class=0, **kw)
    # Whatever the budget, the same training subset: neither protocol changes training.
    assert torch.equal(a_tr, d_tr) and torch.equal(a_tr, e_tr)
    assert len(e_va) == 0 and held_out_per_class(y[e_va], 3) is None
    assert set(a_va.tolist()) <= set(d_va.tolist())  # same permutation, longer tail


def test_split_full_fraction_holds_nothing_out():
    y = _labels()
    tr, va = stratified_split(y, fraction=1.0, images_per_class=None, val_per_class=50, seed=0)
    assert torch.equal(tr, torch.arange(len(y))) and len(va) == 0
