"""Datasets for one trial: a registry of loaders, subsets, normalisation, augmentations.

Small image datasets are held whole as uint8 tensors (airbench style): the
lineage runner moves them to the device once, indexes batches out of them and
augments on the device, so there is no per-epoch DataLoader.

    info, train, test = load_dataset("cifar10")
    train_idx, val_idx = stratified_split(train.y, fraction=0.01, images_per_class=None,
                                          val_per_class=50, seed=0)
    augment = make_augment("basic", info)
    xb = normalize(augment(train.x[idx].to(dev), gen), info)

Adding a dataset is one file with a `@register(DatasetInfo(...))` loader (importing
from `.base`, never from this package) plus its import line below.
"""
from __future__ import annotations

from .base import (DATASETS, DataError, DatasetInfo, Split, dataset_info, default_root, device_constant,
                   load_dataset, normalize, register, train_size)
from .augment import AUGMENTATIONS, make_augment
from .subset import held_out_per_class, stratified_split

# Each module registers its dataset.
from . import cifar  # noqa: F401
from . import cifar_lt  # noqa: F401
from . import clamm  # noqa: F401
from . import digits  # noqa: F401
from . import eurosat  # noqa: F401
from . import imagenet  # noqa: F401
from . import isic  # noqa: F401

__all__ = [
    "AUGMENTATIONS", "DATASETS", "DataError", "DatasetInfo", "Split", "dataset_info",
    "default_root", "device_constant", "held_out_per_class", "load_dataset", "make_augment", "normalize",
    "register", "stratified_split", "train_size",
]
