"""`isic2018`: ISIC 2018 Task 3 (HAM10000 dermoscopy), 7 diagnosis classes, RGB JPEG.

Layout (the official challenge zips, extracted side by side):
    <root>/isic2018/ISIC2018_Task3_Training_Input/ISIC_<id>.jpg                       10,015 images
    <root>/isic2018/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    <root>/isic2018/ISIC2018_Task3_Validation_Input/ISIC_<id>.jpg                        193 images
    <root>/isic2018/ISIC2018_Task3_Validation_GroundTruth/ISIC2018_Task3_Validation_GroundTruth.csv
Each CSV: header `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`, then one row per image with a
one-hot float label (e.g. `ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0`). Class index =
column order of CLASSES. Images are taken in CSV order; other files in the input
folders (LICENSE.txt, ATTRIBUTION.txt) are ignored.

Splits: Training -> train, Validation -> test (the Task 3 test labels were released
later and are not used here). No automatic download: the archive is behind the
challenge's terms of use (https://challenge.isic-archive.com/data/#2018).

Images (600x450 originals) are resized so the shorter side is 224 and the centre
224x224 is cropped (folders.RESIZE_RULE), decoded once into
<root>/isic2018/.lth-cache-224-{train,test}.npy. Normalisation: ImageNet's
mean/std, the convention for dermoscopy classifiers at 224 px.
"""
from __future__ import annotations

import csv
import io
import os

from .base import DataError, DatasetInfo, Split, register
from .folders import cached_split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INFO = DatasetInfo(
    name="isic2018", num_classes=7, channels=3, image_size=224, train_size=10015, test_size=193,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, autoaugment_policy="imagenet",
)
CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
FOLDER = "isic2018"
URL = "https://challenge.isic-archive.com/data/#2018"
SPLITS = {  # our split -> (input folder, ground-truth CSV), relative to <root>/isic2018
    "train": ("ISIC2018_Task3_Training_Input",
              os.path.join("ISIC2018_Task3_Training_GroundTruth", "ISIC2018_Task3_Training_GroundTruth.csv")),
    "test": ("ISIC2018_Task3_Validation_Input",
             os.path.join("ISIC2018_Task3_Validation_GroundTruth", "ISIC2018_Task3_Validation_GroundTruth.csv")),
}


def _bad(path: str, why: str) -> DataError:
    return DataError(f"isic2018: {path} is not a valid ISIC 2018 Task 3 ground-truth file ({why}); "
                     f"replace it from {URL}")


def read_ground_truth(path: str) -> list[tuple[str, int]]:
    """[(image id, class index)] in file order, from a Task 3 ground-truth CSV."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _bad(path, f"not UTF-8 text: {e}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    expected = ["image", *CLASSES]
    if not rows or [c.strip() for c in rows[0]] != expected:
        raise _bad(path, f"header must be {','.join(expected)}")
    out, seen = [], set()
    for line, row in enumerate(rows[1:], 2):
        if len(row) != len(expected):
            raise _bad(path, f"row {line} has {len(row)} fields, expected {len(expected)}")
        image = row[0].strip()
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise _bad(path, f"row {line} has a non-numeric label") from None
        hot = [i for i, v in enumerate(values) if v == 1.0]
        if len(hot) != 1 or any(v != 0.0 for i, v in enumerate(values) if i != hot[0]):
            raise _bad(path, f"row {line} ({image}) is not one-hot")
        if not image or os.sep in image or "/" in image or image in seen:
            raise _bad(path, f"row {line} has an empty, nested or repeated image id {image!r}")
        seen.add(image)
        out.append((image, hot[0]))
    if not out:
        raise _bad(path, "no rows")
    return out


def _split(root: str, split: str) -> Split:
    base = os.path.join(root, FOLDER)
    input_dir, gt = (os.path.join(base, p) for p in SPLITS[split])
    rows = read_ground_truth(gt)
    paths = [os.path.join(input_dir, f"{image}.jpg") for image, _ in rows]
    return cached_split("isic2018", base, split, paths, [c for _, c in rows], size=INFO.image_size, mode="RGB")


@register(INFO)
def load(root: str, download: bool) -> tuple[Split, Split]:
    del download  # registration-gated: never downloaded automatically
    base = os.path.join(root, FOLDER)
    missing = [os.path.join(base, p) for pair in SPLITS.values() for p in pair
               if not os.path.exists(os.path.join(base, p))]
    if missing:
        raise DataError(f"isic2018: not found: {', '.join(missing)}; download the ISIC 2018 Task 3 training "
                        f"and validation inputs and ground truth from {URL} and extract them into {base}")
    return _split(root, "train"), _split(root, "test")
