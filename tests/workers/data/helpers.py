"""Datasets written small in their real on-disk formats, and checks the dataset tests share."""
from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from workers.data import cifar, clamm, eurosat


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def noise(rng, w, h, mode="RGB") -> Image.Image:
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def reference(path, size, mode) -> np.ndarray:
    """torchvision's Resize(size) + CenterCrop(size) on the PIL image: the documented rule, computed independently."""
    from torchvision.transforms import functional as TF

    with Image.open(path) as im:
        im = TF.center_crop(TF.resize(im.convert(mode), size), size)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def check_split(s, n, channels, size):
    assert s.x.shape == (n, channels, size, size) and s.x.dtype == torch.uint8 and s.x.is_contiguous()
    assert s.y.shape == (n,) and s.y.dtype == torch.int64


def md5_of(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def write_cifar100(root, train_per_class, test_per_class, seed=0):
    """torchvision's real cifar-100-python pickles (str keys; protocol 4: fast for 10,000 images)."""
    fmt = cifar.CIFAR100_FMT
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, fmt.folder)
    os.makedirs(folder, exist_ok=True)
    out = []
    for fname, per_class in ((fmt.train_files[0], train_per_class), (fmt.test_files[0], test_per_class)):
        y = rng.permutation(np.repeat(np.arange(100), per_class))
        x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump({"data": x, "fine_labels": [int(v) for v in y], "coarse_labels": [0] * len(y)}, f, protocol=4)
        out.append((x.reshape(-1, 3, 32, 32), y))
    with open(os.path.join(folder, fmt.meta_file), "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f, protocol=2)
    return out


def write_eurosat(root, per_class=5, folder="2750", seed=0):
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "eurosat", folder)
    for cls in eurosat.CLASSES:
        os.makedirs(os.path.join(base, cls))
        for n in range(1, per_class + 1):
            noise(rng, 64, 64).save(os.path.join(base, cls, f"{cls}_{n}.jpg"), quality=90)
    return base


def pil_rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


ISIC_HEADER = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"


def write_isic(root, train_labels=(0, 1, 1, 2, 3, 4, 5, 6), test_labels=(6, 5, 4, 3, 2, 1, 0), seed=0):
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "isic2018")
    n = 24306
    for split, labels in (("Training", train_labels), ("Validation", test_labels)):
        inp = os.path.join(base, f"ISIC2018_Task3_{split}_Input")
        gt_dir = os.path.join(base, f"ISIC2018_Task3_{split}_GroundTruth")
        os.makedirs(inp)
        os.makedirs(gt_dir)
        open(os.path.join(inp, "LICENSE.txt"), "w").write("CC-BY-NC\n")  # shipped beside the images
        rows = [ISIC_HEADER]
        for i, c in enumerate(labels):
            w, h = (300, 225) if i % 2 == 0 else (225, 300)  # the real 600x450, halved; some portrait
            noise(rng, w, h).save(os.path.join(inp, f"ISIC_{n:07d}.jpg"), quality=90)
            rows.append(",".join([f"ISIC_{n:07d}"] + ["1.0" if k == c else "0.0" for k in range(7)]))
            n += 1
        with open(os.path.join(gt_dir, f"ISIC2018_Task3_{split}_GroundTruth.csv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return base


def write_clamm(root, release="2016", seed=0):
    """Grayscale TIFF pages and the ';'-separated '@' label files of the two CLaMM releases."""
    rng = np.random.default_rng(seed)
    if release == "2016":
        (train_dir, train_csv), (test_dir, test_csv) = clamm.LAYOUTS[0][1:]
    else:
        (train_dir, train_csv), (test_dir, test_csv) = clamm.LAYOUTS[1][1:]
    base = os.path.join(root, "clamm")
    out = {}
    for split, folder, label_file in (("train", train_dir, train_csv), ("test", test_dir, test_csv)):
        os.makedirs(os.path.join(base, folder))
        n = 12 if split == "train" else 6
        labels = [i % 12 for i in range(n)] if split == "train" else [11, 0, 2, 9, 4, 5]
        rows = []
        for i, c in enumerate(labels):
            name = f"IRHT_P_{split}_{i:06d}.tif"
            noise(rng, 260 + 7 * i, 300, mode="L").save(os.path.join(base, folder, name))
            if release == "2016" and split == "train":
                rows.append(f"{name};{c + 1};{1000 + c}")  # class numbers 1..12
            elif release == "2016":
                rows.append(f"{name};{clamm.CLASSES[c].replace('_', ' ').title()};x")  # class names
            else:
                rows.append(f"{i};{name};{c + 1};3")  # extra leading column, header without known names
        header = "FILENAME;SCRIPT_TYPE;DATE" if release == "2016" else "ID;IMG;TYPE;DATE_TYPE"
        with open(os.path.join(base, folder, label_file), "w") as f:
            f.write(header + "\r\n" + "\r\n".join(rows) + "\r\n")
        out[split] = (os.path.join(base, folder), labels)
    return out


WNIDS = ["n01440764", "n01443537", "n02102040"]


def write_imagenet(root, per_class=2, val_classes=WNIDS, seed=0):
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "imagenet")
    for split, wnids, n in (("train", WNIDS, per_class), ("val", val_classes, 1)):
        for w in wnids:
            os.makedirs(os.path.join(base, split, w))
            for i in range(n):
                noise(rng, 250, 200).save(os.path.join(base, split, w, f"{w}_{i}.JPEG"), format="JPEG")
    return base


def write_cifar10c(root, corruptions=("fog", "snow"), k=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "CIFAR-10-C")
    os.makedirs(folder)
    labels = np.tile(rng.integers(0, 10, k), 5).astype(np.uint8)  # the test labels, once per severity
    np.save(os.path.join(folder, "labels.npy"), labels)
    arrays = {}
    for c in corruptions:
        arrays[c] = rng.integers(0, 256, (5 * k, 32, 32, 3), dtype=np.uint8)
        np.save(os.path.join(folder, f"{c}.npy"), arrays[c])
    return folder, arrays, labels


def write_cifar(root, name, train_per_class=20, test_per_class=10, seed=0):
    """Write a small folder in torchvision's real pickle layout; returns the expected (x, y) arrays."""
    fmt = cifar.FORMATS[name]
    rng = np.random.default_rng(seed)
    k = fmt.info.num_classes

    def make(per_class):
        y = rng.permutation(np.repeat(np.arange(k), per_class))
        x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        return x, y

    folder = os.path.join(root, fmt.folder)
    os.makedirs(folder, exist_ok=True)

    def dump(fname, x, y, protocol):
        # cifar10 with bytes keys (what Python 3 tools write), cifar100 with str keys
        # (what the official Python 2 files decode to). Protocols 2 and 5 reach numpy
        # through different globals (_reconstruct + _codecs vs _frombuffer).
        d = {"data": x, fmt.label_key: [int(v) for v in y], "batch_label": "testing"}
        if name == "cifar10":
            d = {kk.encode(): vv for kk, vv in d.items()}
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump(d, f, protocol=protocol)

    xtr, ytr = make(train_per_class)
    xte, yte = make(test_per_class)
    chunks = np.array_split(np.arange(len(ytr)), len(fmt.train_files))
    for i, (fname, idx) in enumerate(zip(fmt.train_files, chunks)):
        dump(fname, xtr[idx], ytr[idx], protocol=2 if i % 2 == 0 else 5)
    dump(fmt.test_files[0], xte, yte, protocol=2)
    with open(os.path.join(folder, fmt.meta_file), "wb") as f:
        pickle.dump({fmt.meta_key: [f"class{i}" for i in range(k)]}, f, protocol=2)
    return (xtr.reshape(-1, 3, 32, 32), ytr), (xte.reshape(-1, 3, 32, 32), yte)
