"""`imagenet`: ILSVRC-2012 in the standard ImageFolder layout, RGB, 224 px.

Layout:
    <root>/imagenet/train/<wnid>/*.JPEG     1,281,167 images, 1000 wnid folders
    <root>/imagenet/val/<wnid>/*.JPEG       50,000 images, already sorted into wnid folders
                                            (e.g. by the widely used valprep.sh)
Class index = position of the wnid among the sorted train folders (torchvision's
ImageFolder order, so with all 1000 classes the indices are the standard ones). A
partial copy with fewer class folders loads too (indices then count the folders
found; the head keeps 1000 outputs); val folders must be a subset of train's.
Files in a folder are taken in sorted name order.

The paper trains on small per-class subsets; stratified_split(images_per_class=...)
takes them out of the train split returned here.

Images: shorter side resized to 224 and the centre 224x224 cropped
(folders.RESIZE_RULE), decoded once into <root>/imagenet/.lth-cache-224-{train,val}.npy
(~193 GB for train, 7.5 GB for val) and memory-mapped, so a subset only reads its
own images. Decoding the full train split takes hours on one node; it happens once
and the trials waiting on the lock reuse it. Normalisation: ImageNet's mean/std.

No automatic download (https://image-net.org/ requires registration).
"""
from __future__ import annotations

import os

from .base import DataError, DatasetInfo, Split, register
from .folders import cached_split, sorted_images, sorted_subfolders

INFO = DatasetInfo(
    name="imagenet", traits=("many_class",), num_classes=1000, channels=3, image_size=224, train_size=1281167, test_size=50000,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), autoaugment_policy="imagenet",
)
FOLDER = "imagenet"
URL = "https://image-net.org/download.php"


def listing(split_dir: str, index: dict[str, int]) -> tuple[list[str], list[int]]:
    found = sorted_subfolders(split_dir)
    if not found and sorted_images(split_dir):
        raise DataError(f"imagenet: {split_dir} holds images directly; sort them into one folder per wnid "
                        f"(as the training split is), e.g. with the ILSVRC devkit's labels or valprep.sh")
    unknown = [w for w in found if w not in index]
    if unknown:
        raise DataError(f"imagenet: {split_dir} has class folders that the training split lacks: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    paths, labels = [], []
    for wnid in found:
        names = sorted_images(os.path.join(split_dir, wnid))
        if not names:
            raise DataError(f"imagenet: {os.path.join(split_dir, wnid)} holds no images")
        paths += [os.path.join(split_dir, wnid, n) for n in names]
        labels += [index[wnid]] * len(names)
    return paths, labels


@register(INFO)
def load(root: str, download: bool) -> tuple[Split, Split]:
    del download  # registration-gated: never downloaded automatically
    base = os.path.join(root, FOLDER)
    train_dir, val_dir = os.path.join(base, "train"), os.path.join(base, "val")
    missing = [d for d in (train_dir, val_dir) if not os.path.isdir(d)]
    if missing:
        raise DataError(f"imagenet: not found: {', '.join(missing)}; download ILSVRC-2012 from {URL} and lay it "
                        f"out as {train_dir}/<wnid>/*.JPEG and {val_dir}/<wnid>/*.JPEG")
    classes = sorted_subfolders(train_dir)
    if not classes:
        raise DataError(f"imagenet: {train_dir} has no class folders; expected {train_dir}/<wnid>/*.JPEG")
    if len(classes) > INFO.num_classes:
        raise DataError(f"imagenet: {train_dir} has {len(classes)} class folders, more than {INFO.num_classes}")
    index = {wnid: i for i, wnid in enumerate(classes)}
    train, val = (cached_split("imagenet", base, split, *listing(d, index), size=INFO.image_size, mode="RGB")
                  for split, d in (("train", train_dir), ("val", val_dir)))
    return train, val
