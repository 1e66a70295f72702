"""workers.data: datasets, subsets, augmentations. CPU only, no network, seconds in all."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import threading
import time

import numpy as np
import pytest
import torch

from workers.data import (AUGMENTATIONS, DATASETS, DataError, cifar, dataset_info, load_dataset,
                          held_out_per_class, make_augment, normalize, reference_basic,
                          stratified_split)
from workers.data.augment import cutout, cutout_for, padding_for, random_crop_flip
from workers.data.digits import fixed_split


# ---------------------------------------------------------------- fixtures: real-format CIFAR folders

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


# ---------------------------------------------------------------- registry / digits

def test_registry_and_unknown_names():
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "cifar100_lt", "eurosat", "isic2018", "clamm",
                             "imagenet"}
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("cifar10").autoaugment_policy == "cifar10"
    assert dataset_info("digits").autoaugment_policy == "imagenet"
    with pytest.raises(DataError, match="cifar10, cifar100, cifar100_lt, clamm, digits"):
        dataset_info("mnist")
    with pytest.raises(DataError, match="known"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="basic"):
        make_augment("mixup", dataset_info("cifar10"))


def test_digits_pinned():
    info, train, test = load_dataset("digits")
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, 8)
    assert train.x.shape == (1198, 1, 8, 8) and test.x.shape == (599, 1, 8, 8)
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert train.x.is_contiguous() and test.x.is_contiguous()
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    assert torch.bincount(test.y).tolist() == [59, 61, 59, 61, 60, 61, 60, 60, 58, 60]
    assert torch.bincount(train.y).tolist() == [119, 121, 118, 122, 121, 121, 121, 119, 116, 120]
    # The split must never change: pin the exact test images.
    digest = hashlib.sha256(test.x.numpy().tobytes() + test.y.numpy().tobytes()).hexdigest()
    assert digest[:16] == DIGITS_TEST_SHA256_PREFIX
    # The hardcoded normalisation constants are the train split's.
    f = train.x.double() / 255
    assert abs(f.mean().item() - info.mean[0]) < 1e-4 and abs(f.std(unbiased=False).item() - info.std[0]) < 1e-4
    z = normalize(train.x, info)
    assert z.dtype == torch.float32 and z.device == train.x.device
    assert abs(z.mean().item()) < 1e-3 and abs(z.std().item() - 1) < 1e-3


DIGITS_TEST_SHA256_PREFIX = "bbb82fde88f0ff10"


def test_digits_split_is_disjoint_and_complete():
    y = np.repeat(np.arange(10), 30)
    tr, te = fixed_split(y)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 300
    assert np.bincount(y[te]).tolist() == [10] * 10


# ---------------------------------------------------------------- CIFAR on disk

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_real_format_round_trip(tmp_path, name):
    per_class = 20 if name == "cifar10" else 3
    (xtr, ytr), (xte, yte) = write_cifar(tmp_path, name, train_per_class=per_class, test_per_class=2)
    info, train, test = load_dataset(name, root=str(tmp_path), download=False)
    assert info == dataset_info(name) and info.channels == 3 and info.image_size == 32
    assert train.x.dtype == torch.uint8 and train.x.is_contiguous() and train.y.dtype == torch.int64
    assert torch.equal(train.x, torch.from_numpy(xtr)) and torch.equal(train.y, torch.from_numpy(ytr))
    assert torch.equal(test.x, torch.from_numpy(xte)) and torch.equal(test.y, torch.from_numpy(yte))
    # Decoded once per process: a second call returns the cached tensors.
    _, train2, _ = load_dataset(name, root=str(tmp_path), download=False)
    assert train2.x is train.x


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    monkeypatch.setenv("LTH_DATA_ROOT", str(tmp_path))
    _, train, _ = load_dataset("cifar10", download=False)
    assert len(train) == 20


def test_missing_folder_names_path_and_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in str(e.value)
    assert "cifar-10-python.tar.gz" in str(e.value)

    def offline(fmt, root):
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar, "_download", offline)
    with pytest.raises(DataError, match="download failed.*network unreachable") as e:
        load_dataset("cifar100", root=str(tmp_path), download=True)
    assert os.path.join(str(tmp_path), "cifar-100-python") in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_one_file_is_missing(tmp_path):
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_truncated_pickle_is_a_data_error(tmp_path):
    write_cifar(tmp_path, "cifar10", train_per_class=4, test_per_class=1)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_wrong_shape_or_labels_is_a_data_error(tmp_path):
    write_cifar(tmp_path, "cifar100", train_per_class=1, test_per_class=1)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "fine_labels": [0, 1, 2, 3]}, f)
    with pytest.raises(DataError, match="uint8"):
        load_dataset("cifar100", root=str(tmp_path), download=False)
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}, f)
    with pytest.raises(DataError, match="labels outside"):
        load_dataset("cifar100", root=str(tmp_path), download=False)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="not allowed"):
        load_dataset("cifar10", root=str(tmp_path), download=False)
    assert not marker.exists()


def test_full_size_file_must_match_official_md5(tmp_path):
    # A file as large as the official one claims to be it; pretend the official batch is
    # one image so the small fixture file takes the md5 path (and fails it).
    write_cifar(tmp_path, "cifar10", train_per_class=2, test_per_class=1)
    fmt = dataclasses.replace(cifar.CIFAR10_FMT, official_counts={**cifar.CIFAR10_FMT.official_counts,
                                                                   "data_batch_1": 1})
    path = str(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(DataError, match="md5"):
        cifar.read_batch(fmt, path)
    x, y = cifar.read_batch(cifar.CIFAR10_FMT, path)  # the real rule: small file, shape-checked
    assert x.shape == (4, 3, 32, 32) and y.dtype == np.int64


def test_concurrent_prepare_downloads_once(tmp_path, monkeypatch):
    calls = []

    def fake_download(fmt, root):
        calls.append(fmt.info.name)
        time.sleep(0.2)  # long enough for the other thread to reach the lock
        write_cifar(root, fmt.info.name, train_per_class=1, test_per_class=1)

    monkeypatch.setattr(cifar, "_download", fake_download)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(cifar.prepare(cifar.CIFAR10_FMT, str(tmp_path), download=True))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and calls == ["cifar10"]
    assert results == [os.path.join(str(tmp_path), "cifar-10-batches-py")] * 2


# ---------------------------------------------------------------- stratified_split

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


# ---------------------------------------------------------------- augmentations

def _batch(info, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, info.channels, info.image_size, info.image_size), generator=g,
                         dtype=torch.uint8)


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augment_shape_dtype_device_and_determinism(dataset, name):
    info = dataset_info(dataset)
    x = _batch(info)
    aug = make_augment(name, info)
    before = torch.get_rng_state()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is left alone
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.device == x.device
    assert torch.equal(a, b)
    if name == "none":
        assert torch.equal(a, x)
    else:
        assert not torch.equal(a, c) and not torch.equal(a, x)
    with pytest.raises(DataError):
        aug(x.float(), torch.Generator())


def test_sizes_follow_resolution():
    assert (padding_for(32), cutout_for(32)) == (4, 16)
    assert (padding_for(8), cutout_for(8)) == (1, 4)


def _decode(out, pad):
    """Recover (dy, dx, flip) of each crop of the coordinate image from its centre pixel."""
    H = out.shape[-1]
    r = out[:, 0, H // 2, H // 2].long() - 1  # source row of the centre pixel
    cc = out[:, 1, H // 2, H // 2].long() - 1  # source column
    right = out[:, 1, H // 2, H // 2 + 1].long() - 1
    flip = right < cc
    dy = r - H // 2 + pad
    dx = torch.where(flip, cc - (H - 1 - H // 2), cc - H // 2) + pad
    return dy, dx, flip


def test_basic_matches_torchvision_reference():
    info = dataset_info("cifar10")
    H, pad, n = 32, padding_for(32), 2000
    ar = torch.arange(1, H + 1, dtype=torch.uint8)
    # channel 0 = row+1, channel 1 = col+1, channel 2 = a texture: every pixel says where it came from.
    img = torch.stack([ar[:, None].expand(H, H), ar[None, :].expand(H, H),
                       torch.randint(0, 256, (H, H), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)])
    fast = make_augment("basic", info)(img.expand(n, 3, H, H).contiguous(), torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ref = torch.stack([reference_basic(img) for _ in range(n)])

    for out in (fast, ref):
        dy, dx, flip = _decode(out, pad)
        assert abs(flip.float().mean().item() - 0.5) < 0.05
        for d in (dy, dx):  # offsets uniform over 0..2*pad inclusive (9 values at 32 px)
            counts = torch.bincount(d, minlength=2 * pad + 1)
            assert len(counts) == 2 * pad + 1
            assert (counts - n / (2 * pad + 1)).abs().max() < 70

    # The fast path is exactly crop-of-zero-padded-then-flip for every sample.
    dy, dx, flip = _decode(fast, pad)
    padded = torch.nn.functional.pad(img, (pad,) * 4)
    for i in range(0, n, 97):
        crop = padded[:, dy[i]:dy[i] + H, dx[i]:dx[i] + H]
        assert torch.equal(fast[i], crop.flip(-1) if flip[i] else crop)

    # And on average it looks like torchvision's (zero borders and flips included).
    diff = (fast.float().mean(0) - ref.float().mean(0)).abs()
    assert diff.mean() < 1.5 and diff.max() < 12


def test_basic_on_digits_moves_by_at_most_one_pixel():
    info = dataset_info("digits")
    x = _batch(info, n=400)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding_for(8))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(0, 400, 37):
        ok = [torch.equal(out[i], c) for dy in range(3) for dx in range(3)
              for c in (padded[i, :, dy:dy + 8, dx:dx + 8], padded[i, :, dy:dy + 8, dx:dx + 8].flip(-1))]
        assert any(ok)


def test_cutout_zeroes_one_clipped_square():
    x = torch.full((500, 3, 32, 32), 255, dtype=torch.uint8)
    out = cutout(x, torch.Generator().manual_seed(0), 16)
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # same square in every channel
    full = clipped = 0
    for m in zero[:, 0]:
        rows, cols = m.any(1), m.any(0)
        assert torch.equal(m, rows[:, None] & cols[None, :])  # a rectangle
        rr, cc = rows.nonzero().flatten(), cols.nonzero().flatten()
        assert len(rr) == rr[-1] - rr[0] + 1 and len(cc) == cc[-1] - cc[0] + 1  # contiguous
        h, w = len(rr), len(cc)
        assert 8 <= h <= 16 and 8 <= w <= 16  # the centre is inside, so at least half survives
        full += (h, w) == (16, 16)
        clipped += (h, w) != (16, 16)
    assert full > 100 and clipped > 100
    assert torch.equal(out[~zero], x[~zero])
