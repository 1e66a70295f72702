"""Distribution-shift test sets for CIFAR-10 models (evaluation only, not training datasets).

CIFAR-10-C (Hendrycks & Dietterich 2019), https://zenodo.org/record/2535967:
    <root>/CIFAR-10-C/<corruption>.npy   uint8 [50000, 32, 32, 3]: severities 1..5 stacked in
                                         blocks of 10000 (rows (s-1)*10000 .. s*10000-1)
    <root>/CIFAR-10-C/labels.npy         [50000] (the 10000 test labels, five times)
  load_cifar10c(root, corruptions=None, severities=None) -> {(corruption, severity): Split}
  The mapping is lazy: files are opened memory-mapped and a (corruption, severity)
  block is read, transposed to [N, 3, 32, 32] and copied only when it is looked up
  (30 MB each; all 95 would be 2.9 GB). Each lookup reads again: keep the Split if
  you need it twice. The block size is rows / 5, so files with fewer rows (a subset
  made by hand, test fixtures) load by the same rule.

CIFAR-10.2 (Lu et al. 2020), https://github.com/modestyachts/cifar-10.2:
    <root>/cifar-10.2/cifar102_test.npz  keys `images` uint8 [2000, 32, 32, 3], `labels` [2000]
  load_cifar102(root) -> Split
  (The repository's older cifar102_test.npy is a pickled dict, refused: unpickling
  runs code. Its .npz is read with allow_pickle=False.)

Both come with download=False by default; download=True fetches the public files
under a FileLock (CIFAR-10-C is a 2.9 GB tar). Labels use CIFAR-10's class order.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch

from .base import DataError, Split
from .folders import fetch, obtain

CIFAR10C_CORRUPTIONS = (
    # the 15 of the benchmark
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    # the 4 extra ones released with them
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
SEVERITIES = (1, 2, 3, 4, 5)
CIFAR10C_FOLDER = "CIFAR-10-C"
CIFAR10C_URL = "https://zenodo.org/record/2535967"
CIFAR10C_TAR = ("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar", "CIFAR-10-C.tar",
                "56bf5dcef84df0e2308c6dcbcbbd8499")
CIFAR102_FOLDER = "cifar-10.2"
CIFAR102_FILE = "cifar102_test.npz"
CIFAR102_URL = "https://github.com/modestyachts/cifar-10.2"
CIFAR102_RAW = "https://github.com/modestyachts/cifar-10.2/raw/master/cifar102_test.npz"


def _check_labels(y: np.ndarray, path: str, n: int, fix: str) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers of shape ({n},), got {y.dtype} {y.shape}; {fix}")
    if n and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels outside 0..9; {fix}")
    return y.astype(np.int64)


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))  # NHWC -> NCHW, a real copy
    return Split(x=torch.from_numpy(x), y=torch.from_numpy(np.ascontiguousarray(labels)))


# ---------------------------------------------------------------- CIFAR-10-C

class CorruptionSplits(Mapping):
    """{(corruption, severity): Split}, each block read on lookup from memory-mapped files."""

    def __init__(self, folder: str, arrays: dict[str, np.ndarray], labels: np.ndarray, severities: tuple[int, ...]):
        self.folder, self._arrays, self._labels = folder, arrays, labels
        self._keys = [(c, s) for c in arrays for s in severities]
        self.per_severity = len(labels) // len(SEVERITIES)

    def __getitem__(self, key) -> Split:
        if key not in self._keys:
            raise KeyError(key)
        c, s = key
        rows = slice((s - 1) * self.per_severity, s * self.per_severity)
        return _to_split(self._arrays[c][rows], self._labels[rows])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def load_cifar10c(root: str, corruptions: Iterable[str] | None = None, severities: Iterable[int] | None = None,
                  download: bool = False) -> CorruptionSplits:
    """Lazy {(corruption, severity): Split} for the chosen corruptions (default: all 19) and severities (1..5)."""
    corruptions = tuple(dict.fromkeys(CIFAR10C_CORRUPTIONS if corruptions is None else corruptions))
    severities = tuple(dict.fromkeys(SEVERITIES if severities is None else severities))
    unknown = [c for c in corruptions if c not in CIFAR10C_CORRUPTIONS]
    if unknown:
        raise DataError(f"unknown CIFAR-10-C corruption(s) {', '.join(map(str, unknown))}; "
                        f"known: {', '.join(CIFAR10C_CORRUPTIONS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities or not corruptions:
        raise DataError(f"CIFAR-10-C needs at least one corruption and severities within 1..5, got {list(severities)}")

    root = os.path.abspath(os.path.expanduser(root))
    folder = os.path.join(root, CIFAR10C_FOLDER)
    needed = ["labels", *corruptions]
    fix = f"download CIFAR-10-C.tar from {CIFAR10C_URL} and extract it into {root}"

    def missing() -> list[str]:
        return [p for p in (os.path.join(folder, f"{n}.npy") for n in needed) if not os.path.isfile(p)]

    url, filename, md5 = CIFAR10C_TAR
    obtain("cifar10c", root, ", ".join(missing()) or folder, lambda: not missing(),
           lambda: fetch([url, f"{url}?download=1"], folder, filename=filename, md5=md5, member=CIFAR10C_FOLDER),
           download, fix)

    def open_npy(name: str) -> tuple[str, np.ndarray]:
        path = os.path.join(folder, f"{name}.npy")
        try:
            return path, np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            msg = " ".join(str(e).split())
            raise DataError(f"{path} is not a readable .npy file ({type(e).__name__}: {msg}); {fix}") from None

    path, y = open_npy("labels")
    n = len(y) if y.ndim == 1 else -1
    if n <= 0 or n % len(SEVERITIES):
        raise DataError(f"{path}: expected [5*K] labels (5 severities of K images), got shape {y.shape}; {fix}")
    labels = _check_labels(np.asarray(y), path, n, fix)
    arrays = {}
    for c in corruptions:
        path, x = open_npy(c)
        if x.dtype != np.uint8 or x.shape != (n, 32, 32, 3):
            raise DataError(f"{path}: expected uint8 [{n}, 32, 32, 3] (as many rows as labels.npy), "
                            f"got {x.dtype} {list(x.shape)}; {fix}")
        arrays[c] = x
    return CorruptionSplits(folder, arrays, labels, severities)


# ---------------------------------------------------------------- CIFAR-10.2

def cifar102_path(root: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(root)), CIFAR102_FOLDER, CIFAR102_FILE)


def load_cifar102(root: str, download: bool = False) -> Split:
    """The 2000-image CIFAR-10.2 test set."""
    path = cifar102_path(root)
    fix = f"download {CIFAR102_FILE} from {CIFAR102_URL} into {os.path.dirname(path)}"
    old = os.path.join(os.path.dirname(path), "cifar102_test.npy")
    if not os.path.isfile(path) and os.path.isfile(old):
        raise DataError(f"cifar10.2: found {old}, the repository's older pickled release, which is not "
                        f"loaded (unpickling runs code); {fix}")
    obtain("cifar10.2", os.path.dirname(os.path.dirname(path)), path, lambda: os.path.isfile(path),
           lambda: fetch([CIFAR102_RAW], path, filename=CIFAR102_FILE, md5=None, member=None), download, fix)
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        msg = " ".join(str(e).split())
        raise DataError(f"cifar10.2: {path} is not a valid CIFAR-10.2 file ({type(e).__name__}: {msg}); "
                        f"{fix}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"cifar10.2: {path}: 'images' must be uint8 [N, 32, 32, 3], got {images.dtype} "
                        f"{list(images.shape)}; {fix}")
    return _to_split(images, _check_labels(labels, path, len(images), fix))
