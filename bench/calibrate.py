"""`lth-sweep bench --calibrate`: the throughput table `plan` costs with (orchestrator/costs.py).

Times real training steps (forward, backward, SGD step; bf16 autocast on a
GPU, as trials train there) of every architecture at every image size of the
dataset registry, at width 1, on this machine's device, and records each
pair's sustained FLOP/s with the device's name.
"""
from __future__ import annotations

import time

import torch

from orchestrator.costs import TRAIN_FLOPS_PER_FORWARD, forward_flops, key, write_table

from .common import device_name, sync


def calibrate(archs=None, sizes=None, steps: int = 3, batch: int = 16, out=None, log=print) -> dict:
    from workers import data
    from workers.models import ARCHS, build_model
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    archs = sorted(ARCHS) if archs is None else archs
    sizes = sorted({data.dataset_info(n).image_size for n in data.DATASETS}) if sizes is None else sizes
    flops_per_s: dict[str, float] = {}
    for arch in archs:
        for size in sizes:
            # Big images in small batches on a CPU: the table is per image, and a step must not take minutes.
            b = batch * 4 if cuda else (batch if size <= 64 else 2)
            torch.manual_seed(0)
            model = build_model(arch, num_classes=10, in_channels=3, image_size=size, width=1.0,
                                variant="standard").to(device)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            x = torch.randn(b, 3, size, size, device=device)
            y = torch.randint(0, 10, (b,), device=device)

            def step():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step()  # warm-up: kernels, allocator
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            images_per_s = steps * b / (time.perf_counter() - t0)
            sustained = images_per_s * TRAIN_FLOPS_PER_FORWARD * forward_flops(arch, size, 3, 10)
            flops_per_s[key(arch, size)] = round(sustained, 1)
            log(f"calibrate {arch} at {size}px: {images_per_s:,.1f} images/s, {sustained / 1e12:.3f} TFLOP/s")
    table = {"device": device_name(), "measured": time.strftime("%Y-%m-%d"), "flops_per_s": flops_per_s}
    path = write_table(table, out)
    log(f"calibrate: wrote {path}; `lth-sweep plan` now costs with it")
    return table
