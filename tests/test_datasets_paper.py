"""The paper's datasets, each read from its real on-disk layout (tiny files written here). CPU, no network."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import pickle
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from workers.data import DATASETS, DataError, dataset_info, load_dataset
from workers.data import cifar, cifar_lt, clamm, eurosat, folders, robustness


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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """(folder, base URL): a local HTTP server, so the real download code runs offline."""
    folder = tmp_path / "served"
    folder.mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield folder, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def md5_of(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_registry_has_the_paper_datasets():
    expect = {"cifar100_lt": (100, 3, 32, "cifar10"), "eurosat": (10, 3, 64, "imagenet"),
              "isic2018": (7, 3, 224, "imagenet"), "clamm": (12, 1, 224, "imagenet"),
              "imagenet": (1000, 3, 224, "imagenet")}
    for name, (k, c, size, policy) in expect.items():
        info = dataset_info(name)
        assert name in DATASETS
        assert (info.num_classes, info.channels, info.image_size, info.autoaugment_policy) == (k, c, size, policy)
        assert len(info.mean) == len(info.std) == c and all(0 < s < 1 for s in info.std)
    assert dataset_info("imagenet").mean == dataset_info("isic2018").mean == (0.485, 0.456, 0.406)
    assert dataset_info("cifar100_lt").mean == dataset_info("cifar100").mean


# ---------------------------------------------------------------- CIFAR-100-LT

LT_TOTALS = {0.1: 19573, 0.05: 15907, 0.02: 12608, 0.01: 10847}  # the published CIFAR-100-LT sizes


@pytest.mark.parametrize("f", cifar_lt.IMBALANCE_FACTORS)
def test_long_tail_counts_follow_the_formula(f):
    assert cifar_lt.IMBALANCE_FACTORS == (0.1, 0.05, 0.02, 0.01)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(100).repeat(500)[torch.randperm(50000, generator=g)]  # balanced, shuffled file order
    idx = cifar_lt.long_tail_indices(y, 100, f)
    assert idx.dtype == torch.int64 and torch.equal(idx, torch.unique(idx))  # sorted, no repeats
    counts = torch.bincount(y[idx], minlength=100).tolist()
    assert counts == [int(500 * f ** (c / 99)) for c in range(100)]
    assert counts[0] == 500 and counts[-1] == int(500 * f) and sum(counts) == LT_TOTALS[f]
    assert counts == sorted(counts, reverse=True)
    for c in (0, 17, 99):  # the first n_c images of the class, in file order
        mine = idx[y[idx] == c]
        assert torch.equal(mine, torch.nonzero(y == c).flatten()[:counts[c]])


def test_long_tail_refuses_what_it_cannot_build():
    y = torch.arange(10).repeat(10)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(DataError, match="imbalance"):
            cifar_lt.long_tail_indices(y, 10, bad)
    assert len(cifar_lt.long_tail_indices(y, 10, 1.0)) == 100
    short = torch.cat([torch.tensor([0]), torch.arange(1, 10).repeat(10)])  # class 0 is the head but has 1 image
    with pytest.raises(DataError, match="class 0 has 1"):
        cifar_lt.long_tail_indices(short, 10, 0.5)
    with pytest.raises(DataError, match="outside"):
        cifar_lt.long_tail_indices(torch.tensor([0, 10]), 10, 0.5)


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


def test_cifar100_lt_reads_the_real_cifar100_files(tmp_path):
    (xtr, ytr), (xte, yte) = write_cifar100(tmp_path, train_per_class=100, test_per_class=1)
    info, train, test = load_dataset("cifar100_lt", root=str(tmp_path), download=False)
    assert info.name == "cifar100_lt"
    want = [int(100 * 0.01 ** (c / 99)) for c in range(100)]  # n_max = 100 in this folder
    check_split(train, sum(want), 3, 32)
    assert torch.bincount(train.y, minlength=100).tolist() == want
    keep = np.sort(np.concatenate([np.flatnonzero(ytr == c)[:n] for c, n in enumerate(want)]))
    assert torch.equal(train.x, torch.from_numpy(xtr[keep])) and torch.equal(train.y, torch.from_numpy(ytr[keep]))
    assert torch.equal(test.x, torch.from_numpy(xte)) and torch.equal(test.y, torch.from_numpy(yte))  # balanced
    tr10, te10 = cifar_lt.load_long_tail(str(tmp_path), False, 0.1)
    assert torch.bincount(tr10.y, minlength=100).tolist() == [int(100 * 0.1 ** (c / 99)) for c in range(100)]
    assert torch.equal(te10.x, test.x)
    tr01, te01 = cifar_lt.load_long_tail(str(tmp_path), False, 0.01)
    assert torch.equal(tr01.x, train.x) and te01.x is te10.x  # every factor shares one parse of the files


def test_cifar100_lt_missing_names_the_cifar100_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar100_lt", root=str(tmp_path), download=False)
    assert os.path.join(str(tmp_path), "cifar-100-python") in one_line(e)


# ---------------------------------------------------------------- EuroSAT

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


@pytest.mark.parametrize("folder", ["2750", "EuroSAT_RGB"])
def test_eurosat_loads_the_official_layout(tmp_path, folder):
    base = write_eurosat(tmp_path, per_class=5, folder=folder)
    train, test = DATASETS["eurosat"](str(tmp_path), False)
    check_split(train, 40, 3, 64)
    check_split(test, 10, 3, 64)
    assert torch.bincount(train.y).tolist() == [4] * 10 and torch.bincount(test.y).tolist() == [1] * 10
    paths, labels = eurosat.listing(base)
    tr, te = eurosat.fixed_split(np.asarray(labels))
    assert os.path.basename(paths[0]) == "AnnualCrop_1.jpg" and labels[-1] == 9  # SeaLake
    assert torch.equal(test.x, torch.from_numpy(np.stack([pil_rgb(paths[i]) for i in te])))
    assert torch.equal(train.x, torch.from_numpy(np.stack([pil_rgb(paths[i]) for i in tr])))
    assert os.path.isfile(os.path.join(str(tmp_path), "eurosat", ".lth-cache-64-all.npy"))


def test_eurosat_split_is_fixed_stratified_80_20():
    sizes = [3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000]  # the real class sizes
    y = np.repeat(np.arange(10), sizes)
    tr, te = eurosat.fixed_split(y)
    assert (len(tr), len(te)) == (21600, 5400) and len(np.intersect1d(tr, te)) == 0
    assert np.bincount(y[te]).tolist() == [600, 600, 600, 500, 500, 400, 500, 600, 500, 600]
    assert hashlib.sha256(te.astype(np.int64).tobytes()).hexdigest()[:16] == "1baedde04344591b"  # never changes


def test_eurosat_other_sizes_are_resized(tmp_path):
    base = write_eurosat(tmp_path, per_class=2)
    noise(np.random.default_rng(1), 80, 70).save(os.path.join(base, "Forest", "Forest_3.jpg"))
    train, test = DATASETS["eurosat"](str(tmp_path), False)
    assert len(train) + len(test) == 21 and train.x.shape[1:] == (3, 64, 64)


def test_eurosat_missing_download_and_bad_layout(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        DATASETS["eurosat"](str(tmp_path), False)
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "eurosat", "2750") in msg and "madm.dfki.de/files/sentinel/EuroSAT.zip" in msg

    def offline(root):
        raise OSError("network unreachable")

    monkeypatch.setattr(eurosat, "_download", offline)
    with pytest.raises(DataError, match="download failed.*network unreachable"):
        DATASETS["eurosat"](str(tmp_path), True)

    calls = []

    def fake(root):  # what the real download leaves behind
        calls.append(root)
        write_eurosat(root, per_class=1)

    monkeypatch.setattr(eurosat, "_download", fake)
    train, test = DATASETS["eurosat"](str(tmp_path), True)
    assert calls == [str(tmp_path)] and len(train) + len(test) == 10

    classes = os.path.join(str(tmp_path), "eurosat", "2750")
    os.rename(os.path.join(classes, "River"), os.path.join(classes, "Rivers"))
    with pytest.raises(DataError, match="unexpected Rivers"):
        DATASETS["eurosat"](str(tmp_path), False)


def test_eurosat_real_download_path(tmp_path, http_dir, monkeypatch):
    served, url = http_dir
    src = write_eurosat(tmp_path / "src", per_class=1)  # .../eurosat/2750, zipped as the official archive is
    with zipfile.ZipFile(served / "EuroSAT.zip", "w") as z:
        for dirpath, _, files in os.walk(src):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, os.path.relpath(full, os.path.dirname(src)))
    monkeypatch.setattr(eurosat, "URLS", (f"{url}/gone/EuroSAT.zip", f"{url}/EuroSAT.zip"))  # mirror fallback
    monkeypatch.setattr(eurosat, "ZIP_MD5", md5_of(served / "EuroSAT.zip"))
    root = tmp_path / "data"
    train, test = DATASETS["eurosat"](str(root), True)
    assert len(train) + len(test) == 10 and sorted(os.listdir(root / "eurosat" / "2750")) == sorted(eurosat.CLASSES)
    assert not [f for f in os.listdir(root / "eurosat") if f.endswith(".partial")]
    monkeypatch.setattr(eurosat, "ZIP_MD5", "0" * 32)  # a corrupted archive is refused
    with pytest.raises(DataError, match="download failed"):
        DATASETS["eurosat"](str(tmp_path / "other"), True)
    assert not (tmp_path / "other" / "eurosat" / "2750").exists()


# ---------------------------------------------------------------- ISIC 2018 Task 3

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


def test_isic2018_loads_the_official_layout(tmp_path):
    base = write_isic(tmp_path)
    info, train, test = load_dataset("isic2018", root=str(tmp_path), download=False)
    check_split(train, 8, 3, 224)
    check_split(test, 7, 3, 224)
    assert train.y.tolist() == [0, 1, 1, 2, 3, 4, 5, 6] and test.y.tolist() == [6, 5, 4, 3, 2, 1, 0]
    first = os.path.join(base, "ISIC2018_Task3_Training_Input", "ISIC_0024306.jpg")
    second = os.path.join(base, "ISIC2018_Task3_Training_Input", "ISIC_0024307.jpg")
    assert np.array_equal(train.x[0].numpy(), reference(first, 224, "RGB"))
    assert np.array_equal(train.x[1].numpy(), reference(second, 224, "RGB"))
    assert os.path.isfile(os.path.join(base, ".lth-cache-224-train.npy"))
    assert os.path.isfile(os.path.join(base, ".lth-cache-224-test.npy"))


@pytest.mark.parametrize("bad, match", [
    ("image,MEL,NV,BCC,AKIEC,BKL,DF\nISIC_0024306,1.0,0.0,0.0,0.0,0.0,0.0\n", "header"),
    (f"{ISIC_HEADER}\nISIC_0024306,0.0,0.5,0.5,0.0,0.0,0.0,0.0\n", "one-hot"),
    (f"{ISIC_HEADER}\nISIC_0024306,0.0,1.0,1.0,0.0,0.0,0.0,0.0\n", "one-hot"),
    (f"{ISIC_HEADER}\nISIC_0024306,x,1.0,0.0,0.0,0.0,0.0,0.0\n", "non-numeric"),
    (f"{ISIC_HEADER}\nISIC_0024306,0.0,1.0\n", "fields"),
    (f"{ISIC_HEADER}\n", "no rows"),
    (b"\xff\xfe\x00garbage\x80", "UTF-8"),
])
def test_isic2018_corrupt_ground_truth_is_a_data_error(tmp_path, bad, match):
    base = write_isic(tmp_path)
    path = os.path.join(base, "ISIC2018_Task3_Training_GroundTruth", "ISIC2018_Task3_Training_GroundTruth.csv")
    with open(path, "wb") as f:
        f.write(bad if isinstance(bad, bytes) else bad.encode())
    with pytest.raises(DataError, match=match) as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert path in one_line(e)


def test_isic2018_missing_data_and_missing_or_broken_images(tmp_path):
    with pytest.raises(DataError) as e:
        DATASETS["isic2018"](str(tmp_path), True)  # never downloads: registration-gated
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "isic2018", "ISIC2018_Task3_Training_Input") in msg
    assert "ISIC2018_Task3_Validation_GroundTruth.csv" in msg and "challenge.isic-archive.com/data/#2018" in msg

    base = write_isic(tmp_path)
    img = os.path.join(base, "ISIC2018_Task3_Validation_Input", "ISIC_0024316.jpg")
    os.remove(img)
    with pytest.raises(DataError, match="missing") as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert img in one_line(e)
    with open(img, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match="not a readable image") as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert img in one_line(e)
    assert not [f for f in os.listdir(base) if ".tmp-" in f]  # no scratch files left behind


# ---------------------------------------------------------------- CLaMM

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


@pytest.mark.parametrize("release", ["2016", "2017"])
def test_clamm_loads_both_releases(tmp_path, release):
    written = write_clamm(tmp_path, release)
    train, test = DATASETS["clamm"](str(tmp_path), False)
    check_split(train, 12, 1, 224)
    check_split(test, 6, 1, 224)
    assert train.y.tolist() == written["train"][1] and test.y.tolist() == written["test"][1]
    folder = written["test"][0]
    assert np.array_equal(test.x[3].numpy(), reference(os.path.join(folder, "IRHT_P_test_000003.tif"), 224, "L"))


def test_clamm_label_values_and_layout_errors(tmp_path):
    with pytest.raises(DataError) as e:
        DATASETS["clamm"](str(tmp_path), True)
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "clamm", "CLaMM_Training_Data_Set", "@CLaMM-filelist.csv") in msg
    assert "clamm.irht.cnrs.fr" in msg

    written = write_clamm(tmp_path, "2016")
    path = os.path.join(written["train"][0], "@CLaMM-filelist.csv")
    good = open(path).read()
    for bad, match in ((good.replace(";1;", ";13;", 1), "outside 1..12"),
                       (good.replace(";1;", ";Gothic;", 1), "unknown script type"),
                       ("NAME;KIND\nfoo;bar\n", "no column of image file names"),
                       ("", "empty")):
        with open(path, "w") as f:
            f.write(bad)
        with pytest.raises(DataError, match=match) as e:
            DATASETS["clamm"](str(tmp_path), False)
        assert path in one_line(e)
    rows = clamm.read_labels(os.path.join(written["test"][0], "@CLaMM_task1.csv"))
    assert [c for _, c in rows] == [11, 0, 2, 9, 4, 5]  # "Uncial", "Caroline", "Half Uncial", "Southern Textualis", ...


# ---------------------------------------------------------------- ImageNet

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


def test_imagenet_loads_the_imagefolder_layout(tmp_path, monkeypatch):
    base = write_imagenet(tmp_path, val_classes=WNIDS[::2])
    os.makedirs(os.path.join(base, "train", ".hidden"))  # hidden folders are not classes
    monkeypatch.setattr(folders, "BUILD_CHUNK", 4)  # the cache is written in several chunks
    info, train, val = load_dataset("imagenet", root=str(tmp_path), download=False)
    assert info.num_classes == 1000
    check_split(train, 6, 3, 224)
    check_split(val, 2, 3, 224)
    assert train.y.tolist() == [0, 0, 1, 1, 2, 2] and val.y.tolist() == [0, 2]  # sorted wnids
    p = os.path.join(base, "val", WNIDS[2], f"{WNIDS[2]}_0.JPEG")
    assert np.array_equal(val.x[1].numpy(), reference(p, 224, "RGB"))
    for i, w in ((3, WNIDS[1]), (5, WNIDS[2])):  # both sides of a chunk boundary
        p = os.path.join(base, "train", w, f"{w}_{i % 2}.JPEG")
        assert np.array_equal(train.x[i].numpy(), reference(p, 224, "RGB"))
    assert os.path.isfile(os.path.join(base, ".lth-cache-224-train.npy"))


def test_imagenet_layout_errors(tmp_path):
    with pytest.raises(DataError) as e:
        DATASETS["imagenet"](str(tmp_path), True)
    msg = one_line(e)
    assert os.path.join(str(tmp_path), "imagenet", "train") in msg and "image-net.org" in msg
    base = write_imagenet(tmp_path)
    os.makedirs(os.path.join(base, "val", "n09999999"))
    with pytest.raises(DataError, match="n09999999"):
        DATASETS["imagenet"](str(tmp_path), False)
    os.rmdir(os.path.join(base, "val", "n09999999"))
    for w in WNIDS:  # the official flat val folder
        src = os.path.join(base, "val", w, f"{w}_0.JPEG")
        os.rename(src, os.path.join(base, "val", f"ILSVRC2012_val_{w}.JPEG"))
        os.rmdir(os.path.join(base, "val", w))
    with pytest.raises(DataError, match="one folder per wnid"):
        DATASETS["imagenet"](str(tmp_path), False)


# ---------------------------------------------------------------- the decoded-image cache

@pytest.fixture
def count_opens(monkeypatch):
    """Image.open, counted; set count_opens.allowed = False to make any decode fail the test."""
    real = Image.open

    class Calls(list):
        allowed = True

    calls = Calls()

    def counting(*a, **k):
        if not calls.allowed:
            raise AssertionError("decoded although the cache is valid")
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def test_cache_is_reused_and_rebuilt_when_files_change(tmp_path, count_opens):
    base = write_imagenet(tmp_path)
    train, val = DATASETS["imagenet"](str(tmp_path), False)
    assert len(count_opens) == 9  # 6 train + 3 val, decoded once
    count_opens.allowed = False
    train2, val2 = DATASETS["imagenet"](str(tmp_path), False)
    assert torch.equal(train2.x, train.x) and torch.equal(val2.x, val.x) and torch.equal(val2.y, val.y)

    # A replaced image (new bytes, new mtime) rebuilds its split, and only that one.
    target = os.path.join(base, "train", WNIDS[1], f"{WNIDS[1]}_0.JPEG")
    Image.new("RGB", (250, 200), (255, 0, 0)).save(target, format="JPEG")
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="decoded although"):  # the stale cache is not used
        DATASETS["imagenet"](str(tmp_path), False)
    count_opens.allowed = True
    count_opens.clear()
    train3, val3 = DATASETS["imagenet"](str(tmp_path), False)
    assert len(count_opens) == 6  # train rebuilt, val reused
    assert not torch.equal(train3.x[2], train.x[2]) and torch.equal(train3.x[3], train.x[3])
    assert abs(train3.x[2, 0].float().mean().item() - 254) < 3  # the red image
    assert torch.equal(val3.x, val.x)

    # A file only touched (same bytes, newer mtime) counts as changed: the cache is not newer than it.
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    count_opens.clear()
    train3b, _ = DATASETS["imagenet"](str(tmp_path), False)
    assert len(count_opens) == 6 and torch.equal(train3b.x, train3.x)

    # An added image rebuilds too; so does a damaged cache file.
    noise(np.random.default_rng(5), 224, 224).save(os.path.join(base, "train", WNIDS[0], "zz.JPEG"), format="JPEG")
    count_opens.clear()
    train4, _ = DATASETS["imagenet"](str(tmp_path), False)
    assert len(train4) == 7 and train4.y.tolist() == [0, 0, 0, 1, 1, 2, 2] and len(count_opens) == 7
    npy = os.path.join(base, ".lth-cache-224-train.npy")
    with open(npy, "rb") as f:  # a damaged copy (a new file: truncating the mapped one in place would SIGBUS)
        half = f.read(os.path.getsize(npy) // 2)
    with open(npy + ".x", "wb") as f:
        f.write(half)
    os.replace(npy + ".x", npy)
    count_opens.clear()
    train5, _ = DATASETS["imagenet"](str(tmp_path), False)
    assert torch.equal(train5.x, train4.x) and len(count_opens) == 7


def test_concurrent_first_loads_decode_once(tmp_path, count_opens):
    write_isic(tmp_path)
    barrier = threading.Barrier(3)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(DATASETS["isic2018"](str(tmp_path), False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert len(count_opens) == 15  # 8 + 7 images, each decoded by one thread only
    assert all(torch.equal(r[0].x, results[0][0].x) for r in results)


def test_cache_needs_disk_space(tmp_path, monkeypatch):
    write_isic(tmp_path)
    monkeypatch.setattr(folders.shutil, "disk_usage", lambda path: type("U", (), {"free": 1 << 20})())
    with pytest.raises(DataError, match="GiB free") as e:
        DATASETS["isic2018"](str(tmp_path), False)
    assert os.path.join(str(tmp_path), "isic2018") in one_line(e)


def test_read_only_folder_decodes_in_memory(tmp_path, monkeypatch):
    write_eurosat(tmp_path, per_class=1)
    monkeypatch.setattr(folders.os, "access", lambda path, mode: False)
    with pytest.warns(UserWarning, match="not writable"):
        train, test = DATASETS["eurosat"](str(tmp_path), False)
    assert len(train) + len(test) == 10
    assert not os.path.exists(os.path.join(str(tmp_path), "eurosat", ".lth-cache-64-all.npy"))


# ---------------------------------------------------------------- CIFAR-10-C / CIFAR-10.2

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


def test_cifar10c_blocks_by_severity(tmp_path):
    assert len(robustness.CIFAR10C_CORRUPTIONS) == len(set(robustness.CIFAR10C_CORRUPTIONS)) == 19
    assert {"speckle_noise", "gaussian_blur", "spatter", "saturate", "jpeg_compression"} <= set(
        robustness.CIFAR10C_CORRUPTIONS)
    folder, arrays, labels = write_cifar10c(tmp_path)
    sets = robustness.load_cifar10c(str(tmp_path), corruptions=["fog", "snow"])
    assert len(sets) == 10 and set(sets) == {(c, s) for c in ("fog", "snow") for s in range(1, 6)}
    for (c, s), split in sets.items():
        check_split(split, 4, 3, 32)
        block = arrays[c][(s - 1) * 4:s * 4]
        assert torch.equal(split.x, torch.from_numpy(block.transpose(0, 3, 1, 2).copy()))
        assert split.y.tolist() == labels[(s - 1) * 4:s * 4].tolist()
    some = robustness.load_cifar10c(str(tmp_path), corruptions=["snow"], severities=[5])
    assert list(some) == [("snow", 5)] and torch.equal(some["snow", 5].x, sets["snow", 5].x)
    with pytest.raises(KeyError):
        some["snow", 1]


def test_cifar10c_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        robustness.load_cifar10c(str(tmp_path))
    assert os.path.join(str(tmp_path), "CIFAR-10-C") in one_line(e) and "zenodo.org/record/2535967" in str(e.value)
    folder, _, _ = write_cifar10c(tmp_path)
    with pytest.raises(DataError) as e:  # all 19 asked for, two present
        robustness.load_cifar10c(str(tmp_path))
    assert os.path.join(folder, "gaussian_noise.npy") in one_line(e)
    with pytest.raises(DataError, match="unknown CIFAR-10-C corruption"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["rain"])
    with pytest.raises(DataError, match="1..5"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["fog"], severities=[6])

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(robustness, "fetch", offline)
    with pytest.raises(DataError, match="download failed.*network unreachable"):
        robustness.load_cifar10c(str(tmp_path), download=True)

    np.save(os.path.join(folder, "fog.npy"), np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"uint8 \[20, 32, 32, 3\]"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["fog"])
    with open(os.path.join(folder, "fog.npy"), "wb") as f:
        f.write(b"not a numpy file")
    with pytest.raises(DataError, match="not a readable .npy") as e:
        robustness.load_cifar10c(str(tmp_path), corruptions=["fog"])
    assert os.path.join(folder, "fog.npy") in one_line(e)
    np.save(os.path.join(folder, "labels.npy"), np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="5 severities"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["snow"])
    np.save(os.path.join(folder, "labels.npy"), np.full(20, 10, np.int64))
    with pytest.raises(DataError, match="outside 0..9"):
        robustness.load_cifar10c(str(tmp_path), corruptions=["snow"])


def test_cifar102_reads_the_npz(tmp_path):
    with pytest.raises(DataError) as e:
        robustness.load_cifar102(str(tmp_path))
    path = os.path.join(str(tmp_path), "cifar-10.2", "cifar102_test.npz")
    assert path in one_line(e) and "github.com/modestyachts/cifar-10.2" in str(e.value)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.int64)
    os.makedirs(os.path.dirname(path))
    np.savez(path, images=images, labels=labels)
    split = robustness.load_cifar102(str(tmp_path))
    check_split(split, 7, 3, 32)
    assert torch.equal(split.x, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    assert split.y.tolist() == labels.tolist()

    np.savez(path, data=images, labels=labels)
    with pytest.raises(DataError, match="not a valid CIFAR-10.2 file"):
        robustness.load_cifar102(str(tmp_path))
    np.savez(path, images=images[..., 0], labels=labels)
    with pytest.raises(DataError, match=r"uint8 \[N, 32, 32, 3\]"):
        robustness.load_cifar102(str(tmp_path))
    np.savez(path, images=images, labels=labels[:3])
    with pytest.raises(DataError, match="labels"):
        robustness.load_cifar102(str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a valid CIFAR-10.2 file"):
        robustness.load_cifar102(str(tmp_path))
    os.remove(path)
    with open(os.path.join(os.path.dirname(path), "cifar102_test.npy"), "wb") as f:
        pickle.dump({"images": images, "labels": labels}, f)
    with pytest.raises(DataError, match="older pickled release"):
        robustness.load_cifar102(str(tmp_path))


def test_robustness_real_download_paths(tmp_path, http_dir, monkeypatch):
    served, url = http_dir
    src = tmp_path / "src"
    _, arrays, labels = write_cifar10c(src)
    with tarfile.open(served / "CIFAR-10-C.tar", "w") as t:  # the official archive: a plain tar of CIFAR-10-C/
        t.add(src / "CIFAR-10-C", arcname="CIFAR-10-C")
    monkeypatch.setattr(robustness, "CIFAR10C_TAR", (f"{url}/CIFAR-10-C.tar", "CIFAR-10-C.tar",
                                                      md5_of(served / "CIFAR-10-C.tar")))
    root = tmp_path / "data"
    sets = robustness.load_cifar10c(str(root), corruptions=["fog"], severities=[2], download=True)
    assert torch.equal(sets["fog", 2].x, torch.from_numpy(arrays["fog"][4:8].transpose(0, 3, 1, 2).copy()))

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.savez(served / "cifar102_test.npz", images=images, labels=np.array([1, 2, 3]))
    monkeypatch.setattr(robustness, "CIFAR102_RAW", f"{url}/cifar102_test.npz")
    split = robustness.load_cifar102(str(root), download=True)
    assert split.y.tolist() == [1, 2, 3] and os.path.isfile(root / "cifar-10.2" / "cifar102_test.npz")
