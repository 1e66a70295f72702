"""`cifar10` / `cifar100` in torchvision's on-disk format, read by our own loader.

Layout (what torchvision downloads and extracts):
    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}
each a pickled dict with "data" (uint8 [N, 3072], CHW-flattened) and "labels" /
"fine_labels"; the meta file holds the class names.

Why not torchvision.datasets.CIFAR10: it checks every file against the md5 of
the official release, so it refuses a small folder in the real format (the
"Known traps" of DESIGN.md), and it uses plain pickle.load, which runs whatever
code a tampered file names. We keep the real format and torchvision's real
download path, and check integrity like this:
  * a data file at least as large as the official release's pixel payload claims
    to be the official file, so it must match the official md5;
  * a smaller file (a test fixture, a hand-made subset) is accepted when it parses
    to the right shapes, dtype and label range;
  * unpickling only ever constructs numpy arrays (SafeUnpickler).
"""
from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import shutil
from dataclasses import dataclass

import numpy as np
import torch
from filelock import FileLock

from .base import DataError, DatasetInfo, Split, register


@dataclass(frozen=True)
class CifarFormat:
    info: DatasetInfo
    tv_name: str  # the torchvision class: single source of URL and md5s
    label_key: str  # key of the labels in a data file
    meta_key: str  # key of the class names in the meta file
    official_counts: dict  # data file -> images in the official release

    @property
    def tv(self) -> type:
        # Imported on first use: `import torchvision` costs ~2 s in every
        # driver and trial process, and digits runs never need it.
        import torchvision.datasets
        return getattr(torchvision.datasets, self.tv_name)

    @property
    def folder(self) -> str:
        return self.tv.base_folder

    @property
    def train_files(self) -> list[str]:
        return [f for f, _ in self.tv.train_list]

    @property
    def test_files(self) -> list[str]:
        return [f for f, _ in self.tv.test_list]

    @property
    def meta_file(self) -> str:
        return self.tv.meta["filename"]

    def expected_files(self) -> list[str]:
        return self.train_files + self.test_files + [self.meta_file]


CIFAR10_FMT = CifarFormat(
    info=DatasetInfo(
        name="cifar10", num_classes=10, channels=3, image_size=32, train_size=50000, test_size=10000,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), autoaugment_policy="cifar10",
    ),
    tv_name="CIFAR10", label_key="labels", meta_key="label_names",
    official_counts={**{f"data_batch_{i}": 10000 for i in range(1, 6)}, "test_batch": 10000},
)
CIFAR100_FMT = CifarFormat(
    info=DatasetInfo(
        name="cifar100", traits=("many_class",), num_classes=100, channels=3, image_size=32, train_size=50000, test_size=10000,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), autoaugment_policy="cifar10",
    ),
    tv_name="CIFAR100", label_key="fine_labels", meta_key="fine_label_names",
    official_counts={"train": 50000, "test": 10000},
)


# ---------------------------------------------------------------- safe unpickling

def _latin1_encode(obj, encoding="latin1", errors="strict"):
    # Python 3 pickles of bytes at protocol <= 2 go through _codecs.encode(str, "latin1").
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode with unexpected arguments")
    return codecs.encode(obj, encoding, errors)


def _allowed_globals() -> dict[tuple[str, str], object]:
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    # Files written under numpy 1 (and the official Python 2 files) name numpy.core;
    # numpy 2 writes numpy._core. Map both to the real objects without importing the shim.
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that can build dicts, lists, strings, numbers and numpy arrays, nothing else."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file") from None


def safe_load(path: str):
    with open(path, "rb") as f:
        # latin1: the official files were written by Python 2 (what torchvision does too).
        return SafeUnpickler(io.BytesIO(f.read()), encoding="latin1").load()


# ---------------------------------------------------------------- reading

def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _str_keys(d: dict) -> dict:
    # Python 2 files decode to str keys; files written by Python 3 tools often use bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _corrupt(fmt: CifarFormat, path: str, why: str) -> DataError:
    folder = os.path.dirname(path)
    return DataError(f"{fmt.info.name}: {path} is not a valid data file ({why}); "
                     f"delete {folder} and download it again ({fmt.tv.url})")


def read_batch(fmt: CifarFormat, path: str) -> tuple[np.ndarray, np.ndarray]:
    """One data file -> (uint8 [N,3,32,32], int64 [N]), after the integrity rule above."""
    official_md5 = dict(fmt.tv.train_list + fmt.tv.test_list)[os.path.basename(path)]
    if os.path.getsize(path) >= fmt.official_counts[os.path.basename(path)] * 3072:
        if _md5(path) != official_md5:
            raise _corrupt(fmt, path, "full-size file whose md5 differs from the official release")
    try:
        entry = _str_keys(safe_load(path))
        data, labels = entry["data"], np.asarray(entry[fmt.label_key])
    except Exception as e:  # truncated, not a pickle, forbidden global, wrong keys, ...
        raise _corrupt(fmt, path, f"{type(e).__name__}: {e}") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise _corrupt(fmt, path, f"'data' must be uint8 [N, 3072], got {getattr(data, 'dtype', type(data))} "
                                  f"{getattr(data, 'shape', '')}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(fmt, path, f"{len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= fmt.info.num_classes):
        raise _corrupt(fmt, path, f"labels outside 0..{fmt.info.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_split(fmt: CifarFormat, folder: str, files: list[str]) -> Split:
    parts = [read_batch(fmt, os.path.join(folder, f)) for f in files]
    x = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    y = np.concatenate([p[1] for p in parts])
    return Split(x=torch.from_numpy(x), y=torch.from_numpy(y))


def _check_meta(fmt: CifarFormat, folder: str) -> None:
    path = os.path.join(folder, fmt.meta_file)
    try:
        names = _str_keys(safe_load(path))[fmt.meta_key]
    except Exception as e:
        raise _corrupt(fmt, path, f"{type(e).__name__}: {e}") from None
    if len(names) != fmt.info.num_classes:
        raise _corrupt(fmt, path, f"{len(names)} class names, expected {fmt.info.num_classes}")


# ---------------------------------------------------------------- obtaining

def _complete(fmt: CifarFormat, folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in fmt.expected_files())


def _download(fmt: CifarFormat, root: str) -> None:
    """Fetch and extract the official archive so that <root>/<folder> appears whole.

    Extracts into a scratch folder and renames it into place, so a crash mid-extract
    never leaves a folder that looks complete. (Tests monkeypatch this function.)
    """
    from torchvision.datasets.utils import download_and_extract_archive

    scratch = os.path.join(root, f".{fmt.info.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    download_and_extract_archive(fmt.tv.url, download_root=scratch, filename=fmt.tv.filename,
                                 md5=fmt.tv.tgz_md5, remove_finished=True)
    os.replace(os.path.join(scratch, fmt.folder), os.path.join(root, fmt.folder))
    shutil.rmtree(scratch, ignore_errors=True)


def prepare(fmt: CifarFormat, root: str, download: bool) -> str:
    """Make sure <root>/<folder> holds every expected file; returns the folder."""
    folder = os.path.join(root, fmt.folder)
    if _complete(fmt, folder):
        return folder
    how = (f"download {fmt.tv.url} and extract it into {root}, "
           f"or point LTH_DATA_ROOT at a folder that holds {fmt.folder}/")
    if not download:
        raise DataError(f"{fmt.info.name}: not found at {folder} (downloads disabled); {how}")
    os.makedirs(root, exist_ok=True)
    # Many trials on one node start together: one downloads, the others wait, then find it complete.
    with FileLock(os.path.join(root, f".{fmt.info.name}.lock")):
        if not _complete(fmt, folder):
            try:
                _download(fmt, root)
            except Exception as e:
                raise DataError(f"{fmt.info.name}: not found at {folder} and the download failed "
                                f"({type(e).__name__}: {e}); {how}") from None
    if not _complete(fmt, folder):
        missing = [f for f in fmt.expected_files() if not os.path.isfile(os.path.join(folder, f))]
        raise DataError(f"{fmt.info.name}: {folder} is missing {', '.join(missing)} after download; {how}")
    return folder


def _loader(fmt: CifarFormat):
    def load(root: str, download: bool) -> tuple[Split, Split]:
        folder = prepare(fmt, root, download)
        _check_meta(fmt, folder)
        return _read_split(fmt, folder, fmt.train_files), _read_split(fmt, folder, fmt.test_files)

    return load


def write_folder(name: str, root: str, train: Split, test: Split) -> str:
    """Write `train` / `test` under `root` in the layout `load` reads (the official
    pickle files: pixels CHW-flattened, labels, the meta file's class names), e.g.
    to benchmark on synthetic CIFAR-shaped data. Returns the folder. Splits as
    large as the official ones are refused: `load` would check those against
    the official md5s."""
    fmt = FORMATS[name]
    folder = os.path.join(root, fmt.folder)
    os.makedirs(folder, exist_ok=True)

    def dump(fname: str, split: Split) -> None:
        if len(split) >= fmt.official_counts[fname]:
            raise DataError(f"{name}: {fname} would be as large as the official file; write fewer images")
        d = {"data": split.x.reshape(len(split), -1).numpy(), fmt.label_key: split.y.tolist()}
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump(d, f, protocol=4)

    chunks = torch.arange(len(train)).tensor_split(len(fmt.train_files))
    for fname, idx in zip(fmt.train_files, chunks):
        dump(fname, Split(train.x[idx], train.y[idx]))
    dump(fmt.test_files[0], test)
    with open(os.path.join(folder, fmt.meta_file), "wb") as f:
        pickle.dump({fmt.meta_key: [f"class{i}" for i in range(fmt.info.num_classes)]}, f, protocol=4)
    return folder


FORMATS = {f.info.name: f for f in (CIFAR10_FMT, CIFAR100_FMT)}
for _fmt in FORMATS.values():
    register(_fmt.info)(_loader(_fmt))
