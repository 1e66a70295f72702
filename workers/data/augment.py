"""The paper's augmentations, on uint8 batches [B, C, H, W] on any device.

    none      identity
    basic     RandomCrop(size, padding) + RandomHorizontalFlip(0.5)
    contrast  basic + ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 + RandomGrayscale(0.2)
    auto      basic + AutoAugment(dataset policy) + Cutout
    rand      basic + RandAugment(num_ops=4) + Cutout

Sizes follow the resolution: at 32 px padding is 4 and Cutout 16, so in general
padding = max(1, size // 8) and Cutout = size // 2.

`basic` and Cutout are batched on the batch's device with per-sample randomness
from the caller's generator: they run every step of every epoch, so they must not
loop in Python. The colour/policy transforms come from torchvision.transforms.v2;
applied to a whole batch v2 would share one random draw across it, so they loop
per sample on the CPU, which only the richer (slower anyway) settings pay for.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import DataError, DatasetInfo

AUGMENTATIONS = ("none", "basic", "contrast", "auto", "rand")

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def padding_for(size: int) -> int:
    return max(1, size // 8)


def cutout_for(size: int) -> int:
    return size // 2


def random_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int) -> torch.Tensor:
    """Batched RandomCrop(H, padding=pad, fill 0) + RandomHorizontalFlip(0.5), one gather."""
    B, C, H, W = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))  # zeros, like torchvision's default fill
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=dev)  # offsets 0..2*pad inclusive
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=dev)
    flip = torch.rand(B, generator=g, device=dev) < 0.5
    ar_h, ar_w = torch.arange(H, device=dev), torch.arange(W, device=dev)
    # A flipped crop reads its columns right to left: fold the flip into the column index.
    cols = dx[:, None] + torch.where(flip[:, None], W - 1 - ar_w, ar_w)  # [B, W]
    rows = dy[:, None] + ar_h  # [B, H]
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def cutout(x: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """Zero a size x size square at a uniformly random centre per sample, clipped at the borders."""
    B, C, H, W = x.shape
    dev = x.device
    y0 = torch.randint(0, H, (B,), generator=g, device=dev) - size // 2
    x0 = torch.randint(0, W, (B,), generator=g, device=dev) - size // 2
    ar_h, ar_w = torch.arange(H, device=dev), torch.arange(W, device=dev)
    in_rows = (ar_h >= y0[:, None]) & (ar_h < y0[:, None] + size)  # [B, H]
    in_cols = (ar_w >= x0[:, None]) & (ar_w < x0[:, None] + size)  # [B, W]
    return x.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


def per_sample(transform: Callable[[torch.Tensor], torch.Tensor]) -> Augment:
    """Apply a v2 transform to each image separately, as a function of the generator.

    v2 transforms draw from torch's global CPU generator, so seed it from `g` and
    restore the caller's state afterwards (fork_rng). Only the CPU generator is
    seeded: torch.manual_seed would also reseed every CUDA generator.
    """
    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=g, device=g.device))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            out = torch.stack([transform(img) for img in x.cpu()])
        return out.to(x.device)

    return apply


def chain(*steps: Augment) -> Augment:
    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for step in steps:
            x = step(x, g)
        return x

    return apply


def make_augment(name: str, info: DatasetInfo) -> Augment:
    """An augmentation: (uint8 [B,C,H,W], generator on its device) -> uint8 batch, same shape/device."""
    if name not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
    pad, cut = padding_for(info.image_size), cutout_for(info.image_size)

    def basic(x, g):
        return random_crop_flip(x, g, pad)

    def erase(x, g):
        return cutout(x, g, cut)

    # v2 handles 1-channel (digits) images in all of these: ColorJitter's hue and
    # saturation and RandomGrayscale leave a single channel as it is.
    def v2_steps():
        # Imported only for the augmentations that need it (see cifar.py's `tv`).
        from torchvision.transforms import v2
        return v2

    steps: dict[str, Callable[[], tuple[Augment, ...]]] = {
        "none": lambda: (),
        "basic": lambda: (basic,),
        "contrast": lambda: (basic, per_sample(v2_steps().Compose([
            v2_steps().RandomApply([v2_steps().ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2_steps().RandomGrayscale(p=0.2),
        ]))),
        "auto": lambda: (basic, per_sample(v2_steps().AutoAugment(
            v2_steps().AutoAugmentPolicy(info.autoaugment_policy))), erase),
        "rand": lambda: (basic, per_sample(v2_steps().RandAugment(num_ops=4)), erase),
    }
    pipeline = chain(*steps[name]())

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != info.channels:
            raise DataError(f"augment expects uint8 [B, {info.channels}, H, W], got {x.dtype} {tuple(x.shape)}")
        return pipeline(x, g)

    return augment


def reference_basic(x: torch.Tensor) -> torch.Tensor:
    """torchvision's own `basic` for one uint8 image [C,H,W] (global RNG); tests compare the fast path to it."""
    size = x.shape[-1]
    from torchvision.transforms import v2
    return v2.Compose([v2.RandomCrop(size, padding=padding_for(size)), v2.RandomHorizontalFlip(0.5)])(x)
