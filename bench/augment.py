"""Augmentation alone: batched on the device vs torchvision image by image (images/s)."""
from __future__ import annotations

import torch

from workers import data
from workers.data.augment import reference_augment

from .common import best_time, sync


def bench_augment(n: int = 500) -> dict:
    """Augmentation alone: batched on the device vs torchvision image by image."""
    info = data.dataset_info("cifar10")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8).to(device)
    out = {}
    for name in ("basic", "contrast", "auto", "rand"):
        fast, ref = data.make_augment(name, info), reference_augment(name, info)
        g = torch.Generator(device).manual_seed(0)

        def run_fast():
            fast(x, g)
            sync(device)

        run_fast()
        f_s = best_time(run_fast, 3)
        r_s = best_time(lambda: ref(x.cpu(), torch.Generator().manual_seed(0)), 1)
        out[name] = {"batched_images_per_s": round(n / f_s), "torchvision_images_per_s": round(n / r_s)}
    return {"_augment": out}
