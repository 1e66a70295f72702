"""Per-image predictions of a committed round: the file and the metrics that carry them.

Each committed round stores the predicted class of every held-out (val) and
test image, with their labels, so image-level statistics (a bootstrap over
test images, which images a ticket gets right) need neither the dataset nor
a retrained network:

    round_<k>/predictions.safetensors    val_pred, val_label, test_pred, test_label
                                         (uint8 up to 256 classes, else int16 / int32)
    metrics["test_images"]               int: images of the test split
    metrics["test_correct"]              base64 of packbits(pred == label, bitorder="little")

Both in each split's stored order. numpy only (no torch): the results side
reads them too.
"""
from __future__ import annotations

import base64
from typing import Optional

import numpy as np

FILE = "predictions.safetensors"
SPLITS = ("val", "test")


def class_dtype(num_classes: int) -> np.dtype:
    """The narrowest integer type that holds every class index."""
    if num_classes <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.int16) if num_classes <= 32768 else np.dtype(np.int32)


def encode(predicted: dict[str, np.ndarray], labels: dict[str, np.ndarray], num_classes: int) -> bytes:
    """The predictions file of a round: {split}_pred and {split}_label per split."""
    from safetensors.numpy import save
    dt = class_dtype(num_classes)
    tensors = {}
    for s in SPLITS:
        tensors[f"{s}_pred"] = np.ascontiguousarray(predicted[s], dtype=dt)
        tensors[f"{s}_label"] = np.ascontiguousarray(labels[s], dtype=dt)
    return save(tensors)


def decode(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load
    return load(data)


def pack_correct(predicted: np.ndarray, labels: np.ndarray) -> str:
    """metrics["test_correct"]: which images were right, one bit each, as ascii."""
    bits = np.packbits(np.asarray(predicted) == np.asarray(labels), bitorder="little")
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(packed, n: int) -> Optional[np.ndarray]:
    """The bool array (length n) behind `test_correct`, given as its base64
    text (metrics) or its raw bytes (the results column); None for None."""
    if packed is None or n is None:
        return None
    raw = base64.b64decode(packed) if isinstance(packed, str) else bytes(packed)
    return np.unpackbits(np.frombuffer(raw, np.uint8), count=int(n), bitorder="little").astype(bool)


def round_metrics(predicted: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    """The metrics a round records from its predictions."""
    return {"test_images": int(len(labels["test"])),
            "test_correct": pack_correct(predicted["test"], labels["test"])}
