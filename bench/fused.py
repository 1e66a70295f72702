"""Fused vs solo training throughput (images/s), same device, same process.

    from bench.fused import bench_fused
    bench_fused(ks=(4, 8))            # -> {"fused_speedup": ..., "fused_k": 8, "_fused": {...}}
    python -m bench.fused [--smoke] [--device cuda] [--ks 4 8]   # prints the JSON

Two cases, each for every K in `ks`: K IMP members (different seeds and
random 20%-pruned masks, `basic` augmentation, SGD + momentum) trained for
`epochs` epochs, fused (`workers.fused.FusedTrainer`, construction and the
per-epoch write-back included) against the same K trained solo one after
another (`Trainer.train_epoch`) and, on CUDA for the "cifar" case, against
K packed processes sharing the GPU (bench/packed.py: what Ray runs for
`gpu: 1/K`, the fair baseline). Data is synthetic uint8 (speed does not
depend on pixel values):

- "quickstart": resnet18 width 0.25 on 8x8 single-channel (digits-shaped)
  images, 120 training images, batch 50;
- "cifar": resnet18 at 32 px, 3 channels, 10 classes, 500 images (1% of
  CIFAR-10), batch 100; width 1.0 on CUDA, `width` (default 0.25) on CPU so
  the case finishes in about a minute there.

Each timing is the best of `repeats` runs after one untimed warm-up epoch
(kernel selection, allocator), fused and solo interleaved so that load from
other processes hits both alike. `fused_speedup` is fused/solo images/s at
the largest K of the "cifar" case.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Optional, Sequence

import torch

from workers import data
from workers.fused import FusedTrainer, conv_strategy
from workers.train import Trainer

from .members import CASES, make_members  # noqa: F401  (bench/packed.py runs the same members)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_solo(members: Sequence[Trainer], epochs: int, first: int) -> float:
    dev = members[0].prep.device
    _sync(dev)
    t0 = time.perf_counter()
    for t in members:
        for e in range(first, first + epochs):
            t.train_epoch(1, e)
    _sync(dev)
    return time.perf_counter() - t0


def _time_fused(members: Sequence[Trainer], epochs: int, first: int, conv: str) -> float:
    dev = members[0].prep.device
    _sync(dev)
    t0 = time.perf_counter()
    fused = FusedTrainer(members, conv=conv)
    for e in range(first, first + epochs):
        fused.train_epoch(1, e)
    _sync(dev)
    return time.perf_counter() - t0


def bench_case(case: str, k: int, width: float, device: torch.device, epochs: int, repeats: int,
               conv: str = "auto") -> dict:
    dataset, n, batch = CASES[case]
    members = make_members(case, k, width, device, epochs + 1)
    # Warm-up: one epoch each way (not timed), then interleaved timed runs.
    # Training continues across runs; only the speed is measured.
    _time_solo(members, 1, 0)
    _time_fused(members, 1, 0, conv)
    solo, fused = [], []
    for r in range(repeats):
        solo.append(_time_solo(members, epochs, 1))
        fused.append(_time_fused(members, epochs, 1, conv))
    images = k * n * epochs
    ips_f, ips_s = images / min(fused), images / min(solo)
    row = {"case": case, "K": k, "width": width, "device": str(device), "images": n, "batch": batch,
           "epochs": epochs, "conv": conv_strategy(conv, device, data.dataset_info(dataset).image_size),
           "fused_images_per_s": ips_f, "solo_images_per_s": ips_s, "speedup": ips_f / ips_s}
    if device.type == "cuda" and case == "cifar":
        # The fair baseline on a GPU: K lineages as K packed processes sharing
        # it (what Ray runs for gpu: 1/K), not K lineages one after another.
        from .packed import bench_packed
        packed = bench_packed(str(device), trials=k, width=width, epochs=epochs,
                              case=case)["_packed"]["packed_images_per_s"]
        row.update(packed_images_per_s=packed, speedup_vs_packed=ips_f / packed)
    return row


def bench_fused(ks: Sequence[int] = (4, 8), width: Optional[float] = None, epochs: Optional[int] = None,
                device: Optional[str] = None, smoke: bool = False, repeats: Optional[int] = None,
                conv: str = "auto") -> dict:
    """Images/s of K fused members vs the same K solo, per case and K (see the
    module docstring). The headline `fused_speedup` is the cifar case's at the
    largest K; `width` is that case's width (default 0.25 on CPU, 1.0 on CUDA;
    each row says which it ran); `conv` the FusedTrainer's conv strategy;
    `smoke` runs toy sizes (K=2, width 0.125, one epoch, one repeat) in seconds."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    width = width if width is not None else (1.0 if dev.type == "cuda" else 0.25)
    ks = tuple(sorted(ks))
    if smoke:
        ks, epochs, repeats = tuple(min(k, 2) for k in ks[-1:]), 1, 1
    epochs = epochs or (1 if dev.type == "cpu" else 5)
    repeats = repeats or (2 if dev.type == "cpu" else 3)
    details: dict = {}
    for case in CASES:
        w = 0.25 if case == "quickstart" else width
        if smoke:
            w = 0.125
        details[case] = {str(k): bench_case(case, k, w, dev, epochs, repeats, conv) for k in ks}
    head = details["cifar"][str(ks[-1])]
    return {"fused_speedup": head["speedup"], "fused_k": ks[-1],
            "fused_speedup_vs_packed": head.get("speedup_vs_packed"), "_fused": details}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fused", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--width", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--conv", default="auto", choices=["auto", "grouped", "loop"])
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    out = bench_fused(ks=a.ks, width=a.width, epochs=a.epochs, device=a.device, smoke=a.smoke,
                      repeats=a.repeats, conv=a.conv)
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
