"""The data package's base types and its dataset registry.

Every loader module registers itself here with `@register(DatasetInfo(...))`
and imports only this module (or its siblings), never the package: the
package's __init__ imports the loaders, so a loader importing the package
would be an import cycle.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from workers.registry import Registry


class DataError(Exception):
    """User-facing problem with a dataset or a subset request (one-line message)."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel, on the 0..1 scale, of the training split
    std: tuple[float, ...]
    autoaugment_policy: str  # torchvision AutoAugmentPolicy value: "cifar10" or "imagenet"
    # Flips that keep every label: `basic` (and each augmentation built on it)
    # mirrors only along these. A mirrored 2 or 5, or a mirrored line of
    # medieval script, is not the same class, so digits and CLaMM declare none.
    flips: tuple[str, ...] = ("horizontal",)
    # Spec fields (DataSpec) the loader takes as keyword arguments, e.g. cifar100_lt's imbalance.
    params: tuple[str, ...] = ()
    # Images in the full training and test splits, as the loader returns them
    # (for `plan`'s cost estimate: no data is read). A loader whose training
    # split depends on its params also sets `train_size_of(**params)`.
    train_size: int = 0
    test_size: int = 0
    train_size_of: Optional[Callable[..., int]] = None
    # What the report groups datasets by: "many_class" (Table 2: ImageNet-scale
    # label sets), "long_tail" (Table 3: one row per imbalance ratio).
    traits: tuple[str, ...] = ()


@dataclass
class Split:
    x: torch.Tensor  # uint8 [N, C, H, W], contiguous. Shared by the in-process cache: do not modify in place.
    y: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.y)


# name -> loader(root: str, download: bool, **params) -> (train Split, test Split); each loader
# carries `.info` so configs can be validated without touching data.
DATASETS: Registry[Callable[..., tuple[Split, Split]]] = Registry("dataset", error=DataError)


def register(info: DatasetInfo):
    """Decorator: registers the loader it wraps as `info.name`, with `info` attached."""
    def wrap(loader):
        loader.info = info
        return DATASETS.register(info.name, loader)

    return wrap


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS.get(name).info


def train_size(name: str, **params) -> int:
    """Images in `name`'s training split under `params` (registry facts, no data read)."""
    info = dataset_info(name)
    return info.train_size_of(**params) if info.train_size_of else info.train_size


def default_root() -> str:
    return os.environ.get("LTH_DATA_ROOT") or os.path.join("~", ".cache", "lth-sweep", "data")


# Decoded datasets, keyed by (name, absolute root, params): every round of a lineage
# (and every trial sharing a worker process) reuses one parse. The lock makes
# concurrent first calls parse once; it is re-entrant so that a loader can build on
# another dataset (cifar100_lt on cifar100) and share its parse.
_CACHE: dict[tuple, tuple[Split, Split]] = {}
_CACHE_LOCK = threading.RLock()


def load_dataset(name: str, root: str | None = None, download: bool = True,
                 **params) -> tuple[DatasetInfo, Split, Split]:
    """(info, train, test). `download` only matters when the files are missing;
    `params` are the dataset's own (DatasetInfo.params), None meaning its default."""
    entry = DATASETS.get(name)
    params = {k: v for k, v in params.items() if v is not None}
    unknown = set(params) - set(entry.info.params)
    if unknown:
        raise DataError(f"dataset {name!r} takes no {', '.join(sorted(unknown))}"
                        + (f" (it takes: {', '.join(entry.info.params)})" if entry.info.params else ""))
    root = os.path.abspath(os.path.expanduser(root or default_root()))
    key = (name, root, tuple(sorted(params.items())))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = entry(root, download, **params)
        train, test = _CACHE[key]
    return entry.info, train, test


_CONSTANTS: dict = {}


def device_constant(key, device, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A small constant tensor, built once per device. A fresh torch.tensor(...,
    device="cuda") in every step is a host-to-device copy from pageable memory,
    which stalls the host behind the queued kernels: per batch, that is a sync."""
    k = (key, str(device))
    t = _CONSTANTS.get(k)
    if t is None:
        t = _CONSTANTS[k] = make().to(device)
    return t


def normalize(x_uint8: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """float32 (x/255 - mean)/std on x's device; works on [C,H,W] and [B,C,H,W].

    Always in the plain (NCHW) layout. A one-channel batch made by an
    index-select has strides (HW, 1, W, 1): "contiguous" and "channels_last"
    at once, and the convs follow channels_last. On CPU that is a hazard,
    not a speed-up: oneDNN 3.12's channels_last conv backward (AVX2, AMD
    EPYC) returns gradients 30-130% off for 1x1 stride-2 convs of 2-4 input
    channels (a ResNet shortcut at width 1/16) and corrupts the heap in other
    small-channel shapes (tests/workers/test_train.py). The layout is the
    Trainer's to choose (channels_last on CUDA), never an accident of how
    the batch was cut."""
    dev = x_uint8.device
    mean = device_constant(("mean", info.mean), dev, lambda: torch.tensor(info.mean).view(-1, 1, 1))
    std = device_constant(("std", info.std), dev, lambda: torch.tensor(info.std).view(-1, 1, 1))
    return (x_uint8.to(torch.float32, memory_format=torch.contiguous_format) / 255.0 - mean) / std
