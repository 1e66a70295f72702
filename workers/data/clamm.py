"""`clamm`: CLaMM, Classification of Latin Medieval Manuscripts (ICFHR 2016 / ICDAR 2017), 12 script classes.

Grayscale page images (TIFF), each a folder holding its images and a ';'-separated
label file whose name starts with '@'. Two releases are recognised, each as a
(train, test) pair, the first pair found wins (never mixed: the 2017 training set
contains 2016 test images):

    ICFHR 2016: <root>/clamm/CLaMM_Training_Data_Set/@CLaMM-filelist.csv          2000 images
                <root>/clamm/CLaMM_task1/@CLaMM_task1.csv                          1000 images
    ICDAR 2017: <root>/clamm/ICDAR2017_CLaMM_Training/@ICDAR2017_CLaMM_Training.csv
                <root>/clamm/ICDAR2017_CLaMM_task1_task3/@ICDAR2017_CLaMM_task1_task3.csv

Label file: a header row, then one row per image. The file-name and script columns
are found by header name (FILENAME and SCRIPT_TYPE, case-insensitive); when the
header does not name them, the first column holding an image file name is the file
name and the next one the script (the 2017 test list has an extra leading column).
SCRIPT_TYPE is the class number 1..12 (CLASSES order, alphabetical, as the
organisers number them) or the class name (any case, '_', '-' or ' ' between words).

No automatic download (https://clamm.irht.cnrs.fr/ hands out the archives).

Images: converted to 1-channel 8-bit ("L"), the shorter side resized to 224 and the
centre 224x224 cropped (folders.RESIZE_RULE), decoded once into
<root>/clamm/.lth-cache-224-{train,test}.npy. This keeps the page's layout but not
its letter shapes at full resolution; it is the protocol the sweep uses for every
224 px dataset. Normalisation: mean 0.5 / std 0.25, an approximation (parchment is
bright, ink dark), not measured on the training set.
"""
from __future__ import annotations

import csv
import io
import os

from .base import DataError, DatasetInfo, Split, register
from .folders import cached_split, is_image_file

INFO = DatasetInfo(
    name="clamm", num_classes=12, channels=1, image_size=224,
    train_size=2000, test_size=1000,  # the ICFHR 2016 release (2017's is larger)
    mean=(0.5,), std=(0.25,), autoaugment_policy="imagenet",
    flips=(),  # mirrored glyphs are other glyphs
)
CLASSES = ("caroline", "cursiva", "half_uncial", "humanistic", "humanistic_cursive", "hybrida",
           "praegothica", "semihybrida", "semitextualis", "southern_textualis", "textualis", "uncial")
FOLDER = "clamm"
URL = "https://clamm.irht.cnrs.fr/"
LAYOUTS = (  # (release, (train folder, label file), (test folder, label file))
    ("ICFHR 2016", ("CLaMM_Training_Data_Set", "@CLaMM-filelist.csv"), ("CLaMM_task1", "@CLaMM_task1.csv")),
    ("ICDAR 2017", ("ICDAR2017_CLaMM_Training", "@ICDAR2017_CLaMM_Training.csv"),
     ("ICDAR2017_CLaMM_task1_task3", "@ICDAR2017_CLaMM_task1_task3.csv")),
)
FILENAME_HEADERS = ("FILENAME", "FILE_NAME", "FILE", "IMAGE", "IMAGE_NAME")
SCRIPT_HEADERS = ("SCRIPT_TYPE", "SCRIPT", "SCRIPTTYPE")


def _norm(s: str) -> str:
    return "_".join(s.strip().lower().replace("-", " ").replace("_", " ").split())


def _bad(path: str, why: str) -> DataError:
    return DataError(f"clamm: {path} is not a valid CLaMM label file ({why}); replace it from {URL}")


def _class_index(value: str, path: str, line: int) -> int:
    v = value.strip()
    if v.isdigit():
        if not 1 <= int(v) <= len(CLASSES):
            raise _bad(path, f"row {line}: script type {v} is outside 1..{len(CLASSES)}")
        return int(v) - 1
    name = _norm(v)
    if name not in CLASSES:
        raise _bad(path, f"row {line}: unknown script type {v!r}")
    return CLASSES.index(name)


def read_labels(path: str) -> list[tuple[str, int]]:
    """[(file name, class index)] in file order."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=";") if any(c.strip() for c in r)]
    if not rows:
        raise _bad(path, "empty")
    header = [c.strip().upper().replace(" ", "_") for c in rows[0]]
    f_col = next((header.index(h) for h in FILENAME_HEADERS if h in header), None)
    s_col = next((header.index(h) for h in SCRIPT_HEADERS if h in header), None)
    start = 1
    if f_col is None or s_col is None:
        # No named columns: the first column holding image file names, then the script.
        start = 0 if any(is_image_file(c.strip()) for c in rows[0]) else 1  # headerless, or unknown header
        sample = rows[start] if start < len(rows) else []
        f_col = next((i for i, c in enumerate(sample) if is_image_file(c.strip())), None)
        if f_col is None:
            raise _bad(path, "no FILENAME/SCRIPT_TYPE header and no column of image file names")
        s_col = f_col + 1
    out, seen = [], set()
    for line, row in enumerate(rows[start:], start + 1):
        if len(row) <= max(f_col, s_col):
            raise _bad(path, f"row {line} has {len(row)} fields")
        name = row[f_col].strip()
        if not is_image_file(name) or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise _bad(path, f"row {line}: {name!r} is not an image file name")
        if name in seen:
            raise _bad(path, f"row {line}: {name} listed twice")
        seen.add(name)
        out.append((name, _class_index(row[s_col], path, line)))
    if not out:
        raise _bad(path, "no rows")
    return out


def find_layout(root: str) -> tuple[str, tuple[str, str], tuple[str, str]]:
    base = os.path.join(root, FOLDER)
    for release, train, test in LAYOUTS:
        if all(os.path.isfile(os.path.join(base, d, f)) for d, f in (train, test)):
            return release, train, test
    expected = "; or ".join(" + ".join(os.path.join(base, d, f) for d, f in (train, test))
                            for _, train, test in LAYOUTS)
    raise DataError(f"clamm: not found: expected {expected}; download the CLaMM training and test "
                    f"sets from {URL} and extract them into {base}")


def _split(root: str, split: str, folder_and_file: tuple[str, str]) -> Split:
    base = os.path.join(root, FOLDER)
    folder, label_file = folder_and_file
    rows = read_labels(os.path.join(base, folder, label_file))
    paths = [os.path.join(base, folder, name) for name, _ in rows]
    return cached_split("clamm", base, split, paths, [c for _, c in rows], size=INFO.image_size, mode="L")


@register(INFO)
def load(root: str, download: bool) -> tuple[Split, Split]:
    del download  # handed out by the organisers: never downloaded automatically
    _, train, test = find_layout(root)
    return _split(root, "train", train), _split(root, "test", test)
