"""Class-stratified training subset plus a held-out validation set from the rest.

The paper trains on a small class-balanced fraction of the training split; model
selection (the winning ticket's round) needs images the network never trained on,
so the validation set comes from training images *not* in the subset.
"""
from __future__ import annotations

import torch

from .base import DataError


def stratified_split(y: torch.Tensor, *, fraction: float | None, images_per_class: int | None,
                     seed: int, val_per_class: int = 0,
                     val_fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx): int64 indices into y, sorted ascending.

    Per class c with N_c images: the subset takes n_c = max(1, round(fraction * N_c))
    (Python round) or exactly images_per_class; validation takes the next
    v_c = min(val_per_class, N_c - n_c) images (or, for trials written before
    the budget was per class, min(round(val_fraction * N_c), N_c - n_c)).
    One permutation per class from torch.Generator(seed): the subset is its head
    and validation the next v_c, so the subset never depends on the validation
    budget, and neither protocol changes what a lineage trains on. Validation is
    empty when nothing is left (fraction 1.0): val_acc is then missing.
    """
    if (fraction is None) == (images_per_class is None):
        raise DataError("give exactly one of fraction / images_per_class")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    if images_per_class is not None and images_per_class < 1:
        raise DataError(f"images_per_class must be >= 1, got {images_per_class}")
    if val_per_class < 0:
        raise DataError(f"val_per_class must be >= 0, got {val_per_class}")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y = torch.as_tensor(y).cpu()
    if y.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if len(y) == 0:
        raise DataError("cannot take a subset of an empty split")

    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y).tolist():  # ascending, so the draw order is fixed
        idx = torch.nonzero(y == c).flatten()
        perm = idx[torch.randperm(len(idx), generator=g)]
        n_total = len(idx)
        if fraction is not None:
            n = max(1, round(fraction * n_total))
        else:
            n = images_per_class
            if n > n_total:
                raise DataError(f"class {c} has {n_total} training images, fewer than images_per_class={n}")
        train.append(perm[:n])
        want = round(val_fraction * n_total) if val_fraction is not None else val_per_class
        val.append(perm[n:n + min(want, n_total - n)])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def held_out_per_class(y_val: torch.Tensor, num_classes: int) -> int | None:
    """The validation budget a split realised: images of its smallest class
    (None when there is no validation image at all)."""
    if len(y_val) == 0:
        return None
    return int(torch.bincount(torch.as_tensor(y_val).cpu(), minlength=num_classes).min())
