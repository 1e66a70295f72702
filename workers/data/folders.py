"""Shared machinery for datasets stored as folders of image files (JPEG, PNG, TIFF).

Decoding tens of thousands of JPEGs costs minutes (ImageNet: hours) and every
trial process would pay it again, so each split is decoded once into a uint8
cache next to the data:

    <dataset folder>/.lth-cache-<size>-<split>.npy    uint8 [N, C, size, size] (numpy .npy)
    <dataset folder>/.lth-cache-<size>-<split>.json   what the .npy was built from (written last)

The .json holds a fingerprint of the inputs: for every image, in split order, its
path relative to the dataset folder, byte size and mtime_ns, plus the decode
settings (size, colour mode, resize rule, CACHE_VERSION). The cache is used only
while the files on disk still give the same fingerprint, so adding, removing,
replacing or reordering an image, or changing a setting, rebuilds it. (This is
stricter than "newer than the folder listing": a file restored with an old mtime,
or one deleted, is noticed too.) Labels are not cached: they come from the
listing / label file every time, so fixing a label file never needs a rebuild.

Building happens under a FileLock (<cache>.lock): the trials of a node start
together, one decodes and the others wait and then reuse. The old .json is removed
first, pixels go to a scratch .npy that is renamed into place, and the .json is
renamed into place last, so a crash never leaves a cache that looks valid.

Loading uses np.load(mmap_mode="c"): pages are read on demand and shared by every
process of the node through the page cache, and copy-on-write keeps the array
writable for torch without ever writing the file. The full ImageNet training
cache is ~193 GB at 224 px; taking a subset out of it reads only that subset.

If the dataset folder is not writable, a valid cache there is still used; without
one the split is decoded in memory (with a warning) every time.

Resize rule (RESIZE_RULE): the shorter side is scaled to `size` (bilinear with
antialiasing, PIL's resize, as torchvision's Resize(size) does on PIL images; the
longer side becomes int(size * long / short)) and the centre size x size is
cropped (torchvision's CenterCrop rounding). Images already size x size are kept
as they are. JPEGs are decoded with PIL's draft mode (DCT-domain downscaling by a
power of two that keeps both sides >= the resized size) before the resize, which
makes large JPEGs several times faster to decode.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from filelock import FileLock

from .base import DataError, Split

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the decode itself changes, so old caches rebuild
RESIZE_RULE = "shorter-side-bilinear+center-crop"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
BUILD_CHUNK = 1024  # images decoded per write: ~150 MB at 224 px


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def sorted_images(folder: str) -> list[str]:
    """Names of the image files directly in `folder`, sorted (hidden files ignored)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and is_image_file(e.name))


def sorted_subfolders(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


# ---------------------------------------------------------------- decoding

def decode_image(path: str, size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 [C, size, size] (C = 1 for mode "L", 3 for "RGB"), by RESIZE_RULE."""
    from PIL import Image  # looked up at call time: tests replace Image.open to prove a cache hit

    with Image.open(path) as im:
        w, h = im.size
        if (w, h) != (size, size):
            short, long_ = min(w, h), max(w, h)
            new_long = int(size * long_ / short)
            nw, nh = (size, new_long) if w <= h else (new_long, size)
            im.draft(mode, (nw, nh))  # JPEG only (no-op otherwise); keeps >= (nw, nh)
        im = im.convert(mode)
        if im.size != (size, size):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
            im = im.crop((left, top, left + size, top + size))
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _decode_into(out: np.ndarray, paths: Sequence[str], size: int, mode: str, name: str) -> None:
    def one(i: int) -> None:
        try:
            out[i] = decode_image(paths[i], size, mode)
        except Exception as e:  # truncated, not an image, wrong mode, decompression bomb, ...
            why = " ".join(f"{type(e).__name__}: {e}".split())
            raise DataError(f"{name}: {paths[i]} is not a readable image ({why}); "
                            f"replace it from the original download") from None

    workers = max(1, min(32, os.cpu_count() or 1, len(paths)))
    if workers == 1:
        for i in range(len(paths)):
            one(i)
        return
    # PIL releases the GIL while decoding and resizing, so threads scale with cores.
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(paths))))


# ---------------------------------------------------------------- the cache

def cache_paths(folder: str, size: int, split: str) -> tuple[str, str, str]:
    base = os.path.join(folder, f".lth-cache-{size}-{split}")
    return base + ".npy", base + ".json", base + ".lock"


def fingerprint(folder: str, paths: Sequence[str], size: int, mode: str, name: str) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{RESIZE_RULE}|{size}|{mode}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            raise DataError(f"{name}: image {p} is missing; restore it from the original download") from None
        h.update(f"{os.path.relpath(p, folder)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _valid_cache(npy: str, meta: str, fp: str, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        with open(meta) as f:
            if json.load(f).get("fingerprint") != fp:
                return None
        x = np.load(npy, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # missing, truncated, not a .npy: rebuild
    if x.dtype != np.uint8 or x.shape != shape or not x.flags.c_contiguous:
        return None
    return x


def _build(npy: str, meta: str, fp: str, paths: Sequence[str], shape: tuple[int, ...], size: int, mode: str,
           name: str) -> None:
    need, free = int(np.prod(shape)), shutil.disk_usage(os.path.dirname(npy)).free
    if free < need + (256 << 20):
        raise DataError(f"{name}: caching {shape[0]} decoded images needs {need / 2**30:.1f} GiB free at "
                        f"{os.path.dirname(npy)}, only {free / 2**30:.1f} GiB are")
    for stale in (meta, npy):
        if os.path.exists(stale):
            os.remove(stale)  # .json first: a crash from here on leaves no cache that looks valid
    tmp = f"{npy}.tmp-{os.getpid()}"
    try:
        # Plain sequential writes, not a writable memmap: a full disk then raises an OSError
        # instead of killing the process with SIGBUS.
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            for start in range(0, shape[0], BUILD_CHUNK):
                part = np.empty((min(BUILD_CHUNK, shape[0] - start), *shape[1:]), np.uint8)
                _decode_into(part, paths[start:start + len(part)], size, mode, name)
                f.write(part.tobytes())
                if start and start % (20 * BUILD_CHUNK) == 0:
                    log.info("%s: decoded %d / %d images", name, start, shape[0])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, npy)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    tmp_meta = f"{meta}.tmp-{os.getpid()}"
    with open(tmp_meta, "w") as f:
        json.dump({"fingerprint": fp, "shape": list(shape), "mode": mode, "size": size,
                   "version": CACHE_VERSION, "resize": RESIZE_RULE}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_meta, meta)


def cached_split(name: str, folder: str, split: str, paths: Sequence[str], labels: Sequence[int], *, size: int,
                 mode: str) -> Split:
    """Split of the images at `paths` (absolute, in split order) decoded by RESIZE_RULE, via the cache."""
    if len(paths) != len(labels):
        raise ValueError("one label per image")
    if not paths:
        raise DataError(f"{name}: no images for the {split} split under {folder}")
    channels = 1 if mode == "L" else 3
    shape = (len(paths), channels, size, size)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    npy, meta, lock = cache_paths(folder, size, split)
    fp = fingerprint(folder, paths, size, mode, name)

    if not os.access(folder, os.W_OK):
        x = _valid_cache(npy, meta, fp, shape)
        if x is None:
            warnings.warn(f"{name}: {folder} is not writable, so the decoded {split} split cannot be cached "
                          f"there; decoding {len(paths)} images in memory", stacklevel=2)
            x = np.empty(shape, np.uint8)
            _decode_into(x, paths, size, mode, name)
        return Split(x=torch.from_numpy(x), y=y)

    with FileLock(lock):
        x = _valid_cache(npy, meta, fp, shape)
        if x is None:
            log.info("%s: decoding %d images of the %s split into %s", name, len(paths), split, npy)
            _build(npy, meta, fp, paths, shape, size, mode, name)
            x = _valid_cache(npy, meta, fp, shape)
            if x is None:  # pragma: no cover - only if something rewrote the files under our lock
                raise DataError(f"{name}: the cache {npy} could not be read back after it was written")
    return Split(x=torch.from_numpy(x), y=y)


# ---------------------------------------------------------------- obtaining public archives

def fetch(urls: Sequence[str], dest: str, *, filename: str, md5: str | None, member: str | None) -> None:
    """Download the first URL that works and put the result at `dest` in one rename.

    member: the folder inside the archive that becomes `dest` (the archive is
    extracted into a scratch folder beside `dest`); None: the downloaded file itself
    becomes `dest`. A crash mid-way never leaves a `dest` that looks complete.
    """
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    scratch = os.path.join(parent, f".{os.path.basename(dest)}.partial")
    errors = []
    for url in urls:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            if member is None:
                download_url(url, scratch, filename=filename, md5=md5)
                os.replace(os.path.join(scratch, filename), dest)
            else:
                download_and_extract_archive(url, download_root=scratch, filename=filename, md5=md5,
                                             remove_finished=True)
                os.replace(os.path.join(scratch, member), dest)
            return
        except Exception as e:
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    raise OSError("; ".join(errors))


def obtain(name: str, root: str, where: str, complete: Callable[[], bool], download_fn: Callable[[], None],
           download: bool, how: str) -> None:
    """Make `complete()` true, downloading under a FileLock if allowed (like cifar.prepare)."""
    if complete():
        return
    if not download:
        raise DataError(f"{name}: not found at {where} (downloads disabled); {how}")
    os.makedirs(root, exist_ok=True)
    with FileLock(os.path.join(root, f".{name}.lock")):
        if not complete():
            try:
                download_fn()
            except Exception as e:
                msg = " ".join(f"{type(e).__name__}: {e}".split())
                raise DataError(f"{name}: not found at {where} and the download failed ({msg}); {how}") from None
    if not complete():
        raise DataError(f"{name}: {where} is still incomplete after the download; {how}")
