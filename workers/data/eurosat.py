"""`eurosat`: EuroSAT RGB (Helber et al. 2019), 27,000 Sentinel-2 tiles, 10 land-use classes, 64x64 JPEG.

Layout (what the official EuroSAT.zip extracts to; torchvision uses the same root):
    <root>/eurosat/2750/<ClassName>/<ClassName>_<n>.jpg
`EuroSAT_RGB/` (the folder name of the later Zenodo release) is accepted in place of `2750/`.

Split: EuroSAT has no official one. SPLIT_SEED fixes a stratified 80/20 split that
must never change: files in sorted order (sorted class folders, sorted file names),
then per class in CLASSES order a permutation by numpy's legacy RandomState(SPLIT_SEED)
(stable across numpy versions); the first round(0.2 * N_c) of it go to test. On the
full dataset: 21,600 train / 5,400 test.

Normalisation: the widely used EuroSAT-RGB statistics (mean 0.3444/0.3803/0.4078,
std 0.2037/0.1366/0.1148 on the 0..1 scale), computed over all 27,000 images; the
80% training part differs in the fourth decimal.

AutoAugment policy "imagenet": its ops were searched on natural photographs, which
aerial RGB tiles resemble far more than 32 px CIFAR thumbnails; the CIFAR policy is
kept for CIFAR only (no EuroSAT-specific policy exists in torchvision).

Decoded once into the shared uint8 cache (folders.py) at <root>/eurosat/.lth-cache-64-all.npy.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .base import DataError, DatasetInfo, Split, register
from .folders import cached_split, fetch, obtain, sorted_images, sorted_subfolders

INFO = DatasetInfo(
    name="eurosat", num_classes=10, channels=3, image_size=64, train_size=21600, test_size=5400,
    mean=(0.3444, 0.3803, 0.4078), std=(0.2037, 0.1366, 0.1148), autoaugment_policy="imagenet",
)
CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
           "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")
FOLDER = "eurosat"
DATA_DIRS = ("2750", "EuroSAT_RGB")  # official zip, later Zenodo release
SPLIT_SEED = 0
TEST_FRACTION = 0.2

URLS = (
    "https://madm.dfki.de/files/sentinel/EuroSAT.zip",
    # torchvision's mirror of the same archive (the DFKI server's certificate has lapsed before)
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
)
ZIP_MD5 = "c8fa014336c82ac7804f0398fcb19387"


def fixed_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), sorted; see the module docstring. Must never change."""
    rng = np.random.RandomState(SPLIT_SEED)
    train, test = [], []
    for c in range(len(CLASSES)):
        perm = rng.permutation(np.flatnonzero(y == c))
        n_test = round(TEST_FRACTION * len(perm))
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def data_dir(root: str) -> str | None:
    for d in DATA_DIRS:
        path = os.path.join(root, FOLDER, d)
        if os.path.isdir(path):
            return path
    return None


def _complete(root: str) -> bool:
    return data_dir(root) is not None  # which class folders it holds, listing() reports


def _download(root: str) -> None:
    """Fetch the official zip and move its `2750/` into place (tests monkeypatch this)."""
    fetch(URLS, os.path.join(root, FOLDER, DATA_DIRS[0]), filename="EuroSAT.zip", md5=ZIP_MD5, member="2750")


def listing(folder: str) -> tuple[list[str], list[int]]:
    found = sorted_subfolders(folder)
    if sorted(found) != sorted(CLASSES):
        missing = sorted(set(CLASSES) - set(found))
        extra = sorted(set(found) - set(CLASSES))
        raise DataError(f"eurosat: {folder} must hold exactly the 10 class folders {', '.join(CLASSES)}"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unexpected {', '.join(extra)}" if extra else ""))
    paths, labels = [], []
    for c, cls in enumerate(CLASSES):
        names = sorted_images(os.path.join(folder, cls))
        if not names:
            raise DataError(f"eurosat: {os.path.join(folder, cls)} holds no images")
        paths += [os.path.join(folder, cls, n) for n in names]
        labels += [c] * len(names)
    return paths, labels


@register(INFO)
def load(root: str, download: bool) -> tuple[Split, Split]:
    where = os.path.join(root, FOLDER, DATA_DIRS[0])
    how = (f"download {URLS[0]} and extract it into {os.path.join(root, FOLDER)} (it unpacks to 2750/), "
           f"or point LTH_DATA_ROOT at a folder that holds {FOLDER}/2750/")
    obtain("eurosat", root, where, lambda: _complete(root), lambda: _download(root), download, how)
    folder = data_dir(root)
    paths, labels = listing(folder)
    whole = cached_split("eurosat", os.path.join(root, FOLDER), "all", paths, labels,
                         size=INFO.image_size, mode="RGB")
    train_idx, test_idx = fixed_split(np.asarray(labels))

    def part(idx: np.ndarray) -> Split:
        idx = torch.from_numpy(idx)
        return Split(x=whole.x[idx].contiguous(), y=whole.y[idx].contiguous())

    return part(train_idx), part(test_idx)

