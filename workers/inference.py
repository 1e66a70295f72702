"""A network's forward without training: its inputs on the device, predictions
and accuracy in large batches with one device sync, and BatchNorm
recalibration. workers/train.py's Trainer evaluates through these; so do the
evaluations after a lineage (workers/evaluations/)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from workers import data

EVAL_BATCH = 1000  # images per forward of an evaluation, and of BatchNorm recalibration (its statistics' batch)
# On a CPU a forward of 1,000 images outgrows the caches: 100 at a time
# classified a CIFAR test split 30% faster here (2-core Xeon, ResNet-18 at
# width 0.25). Predictions do not depend on it; recalibration keeps EVAL_BATCH.
CPU_EVAL_BATCH = 100


def _inputs(xb: torch.Tensor, info: data.DatasetInfo, device: torch.device, channels_last: bool,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # A float64 network (RunOptions.float64): the same images, exactly widened.
    x = data.normalize(xb.to(device, non_blocking=True), info).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def classify(forward, x: torch.Tensor, info: data.DatasetInfo, device: torch.device, autocast: bool = False,
            channels_last: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The predicted class of every image of `x` (int64, on `device`), in large
    batches and without a device sync (the caller puts the model in eval mode)."""
    out = []
    step = EVAL_BATCH if device.type == "cuda" else CPU_EVAL_BATCH
    for b in range(0, x.shape[0], step):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out.append(forward(_inputs(x[b:b + step], info, device, channels_last, dtype)).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=device)


@torch.no_grad()
def accuracy(forward, x: torch.Tensor, y: torch.Tensor, info: data.DatasetInfo, device: torch.device,
             autocast: bool = False, channels_last: bool = False,
             dtype: torch.dtype = torch.float32) -> Optional[float]:
    """Top-1 accuracy with one device sync at the end (the caller puts the
    model in eval mode); None for an empty split."""
    if x.shape[0] == 0:
        return None
    correct = (classify(forward, x, info, device, autocast, channels_last, dtype) == y.to(device)).sum()
    return int(correct) / x.shape[0]


@dataclass
class Evaluation:
    """`accs` ({split}_acc, None for an empty split) and, for the splits asked to predict, each image's
    predicted class and label (int64, on the CPU, in the split's stored order)."""
    accs: dict[str, Optional[float]]
    predicted: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, forward, x: torch.Tensor, info: data.DatasetInfo,
                   device: torch.device, autocast: bool = False, channels_last: bool = False,
                   dtype: torch.dtype = torch.float32) -> None:
    """Replace BatchNorm's running statistics with those of `x` (the training
    subset, unaugmented): reset, then a no-grad train-mode pass with a
    cumulative average (momentum None). The running averages of a short round
    lag the weights they describe; this measures the network that was trained."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or x.shape[0] == 0:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for b in range(0, x.shape[0], EVAL_BATCH):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                forward(_inputs(x[b:b + EVAL_BATCH], info, device, channels_last, dtype))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
