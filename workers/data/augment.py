"""The paper's augmentations, on uint8 batches [B, C, H, W] on any device.

    none      identity
    basic     RandomCrop(size, padding) + RandomHorizontalFlip(0.5) where the dataset
              declares horizontal flips label-preserving (`DatasetInfo.flips`;
              not digits, not CLaMM)
    contrast  basic + ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 + RandomGrayscale(0.2)
    auto      basic + AutoAugment(dataset policy) + Cutout
    rand      basic + RandAugment(num_ops=4) + Cutout

Sizes follow the resolution: at 32 px padding is 4 and Cutout 16, so in general
padding = max(1, size // 8) and Cutout = size // 2.

All of them run batched on the batch's device with per-sample randomness from
the caller's generator: they run every step of every epoch, so they must not
loop in Python or move images to the host. The colour and policy ops are
torchvision.transforms.v2's uint8 kernels with per-sample parameters (ops.py);
`reference_augment` is the same pipeline through v2 itself, one image at a time,
and the tests hold the two to the same statistics.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from workers.registry import Registry

from .base import DataError, DatasetInfo
from . import ops as ops_

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# name -> (info -> the augmentation's steps, applied in order); registered below, after the steps.
AUGMENTATIONS: Registry[Callable[[DatasetInfo], tuple[Augment, ...]]] = Registry("augmentation", error=DataError)


def padding_for(size: int) -> int:
    return max(1, size // 8)


def cutout_for(size: int) -> int:
    return size // 2


def random_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int, flip: bool = True) -> torch.Tensor:
    """Batched RandomCrop(H, padding=pad, fill 0) + RandomHorizontalFlip(0.5)
    (when `flip`), one gather."""
    B, C, H, W = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))  # zeros, like torchvision's default fill
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=dev)  # offsets 0..2*pad inclusive
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=g, device=dev)
    if flip:
        flip = torch.rand(B, generator=g, device=dev) < 0.5
    else:
        flip = torch.zeros(B, dtype=torch.bool, device=dev)
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


# --- colour and policies, batched -------------------------------------------------
# Every random choice below is drawn per sample on the batch's device from the
# caller's generator, and every op is applied to the whole batch with a
# per-sample parameter (the identity where a sample did not draw that op), so
# a policy costs a fixed number of kernels and never syncs with the host.

def _uniform(B: int, lo: float, hi: float, g: torch.Generator, dev) -> torch.Tensor:
    return torch.empty(B, device=dev).uniform_(lo, hi, generator=g)


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.4, hue_max: float = 0.1,
                 p: float = 0.8) -> torch.Tensor:
    """RandomApply([ColorJitter(s, s, s, hue_max)], p): brightness, contrast,
    saturation and hue in a random order per sample, as v2's ColorJitter."""
    B, dev = x.shape[0], x.device
    apply = torch.rand(B, generator=g, device=dev) < p
    factors = {
        "brightness": _uniform(B, 1 - strength, 1 + strength, g, dev),
        "contrast": _uniform(B, 1 - strength, 1 + strength, g, dev),
        "saturation": _uniform(B, 1 - strength, 1 + strength, g, dev),
        "hue": _uniform(B, -hue_max, hue_max, g, dev),
    }
    order = torch.rand(B, 4, generator=g, device=dev).argsort(1)  # a random permutation per sample
    ops = {"brightness": ops_.brightness, "contrast": ops_.contrast,
           "saturation": ops_.saturation, "hue": ops_.hue}
    for position in range(4):
        for k, name in enumerate(ops):
            chosen = apply & (order[:, position] == k)
            # Factor 1 is an exact identity for the three blends; hue's
            # round trip through HSV is not, so hue selects its samples.
            if name == "hue":
                x = torch.where(chosen.view(-1, 1, 1, 1), ops["hue"](x, factors["hue"]), x)
            else:
                x = ops[name](x, torch.where(chosen, factors[name], torch.ones_like(factors[name])))
    return x


def random_grayscale(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    pick = torch.rand(x.shape[0], generator=g, device=x.device) < p
    return torch.where(pick.view(-1, 1, 1, 1), ops_.grayscale3(x), x)


# torchvision.transforms.v2 AutoAugment/RandAugment op space: name -> (magnitudes
# for `bins` bins at size HxW or None, signed). The same tables as v2's.
def _space(H: int, W: int) -> dict[str, tuple]:
    lin = torch.linspace
    return {
        "Identity": (lambda n: None, False),
        "ShearX": (lambda n: lin(0.0, 0.3, n), True),
        "ShearY": (lambda n: lin(0.0, 0.3, n), True),
        "TranslateX": (lambda n: lin(0.0, 150.0 / 331.0 * W, n), True),
        "TranslateY": (lambda n: lin(0.0, 150.0 / 331.0 * H, n), True),
        "Rotate": (lambda n: lin(0.0, 30.0, n), True),
        "Brightness": (lambda n: lin(0.0, 0.9, n), True),
        "Color": (lambda n: lin(0.0, 0.9, n), True),
        "Contrast": (lambda n: lin(0.0, 0.9, n), True),
        "Sharpness": (lambda n: lin(0.0, 0.9, n), True),
        "Posterize": (lambda n: (8 - (torch.arange(n) / ((n - 1) / 4))).round(), False),
        "Solarize": (lambda n: lin(1.0, 0.0, n), False),
        "AutoContrast": (lambda n: None, False),
        "Equalize": (lambda n: None, False),
        "Invert": (lambda n: None, False),
    }


RANDAUGMENT_OPS = [op for op in _space(1, 1) if op != "Invert"]  # v2's RandAugment space


def apply_op(name: str, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """v2's `_apply_image_or_video_transform` for a batch, magnitude m per sample."""
    H, W = x.shape[-2:]
    one_plus = 1.0 + m.to(torch.float64)  # v2 adds in Python floats
    if name == "Identity":
        return x
    if name == "ShearX":
        return ops_.affine(x, ops_.shear_x(m, H, W))
    if name == "ShearY":
        return ops_.affine(x, ops_.shear_y(m, H, W))
    if name == "TranslateX":
        return ops_.affine(x, ops_.translate(m.trunc(), torch.zeros_like(m)))  # v2: int(magnitude)
    if name == "TranslateY":
        return ops_.affine(x, ops_.translate(torch.zeros_like(m), m.trunc()))
    if name == "Rotate":
        return ops_.affine(x, ops_.rotation(m))
    if name == "Brightness":
        return ops_.brightness(x, one_plus)
    if name == "Color":
        return ops_.saturation(x, one_plus)
    if name == "Contrast":
        return ops_.contrast(x, one_plus)
    if name == "Sharpness":
        return ops_.sharpness(x, one_plus)
    if name == "Posterize":
        return ops_.posterize(x, m.to(torch.int32))
    if name == "Solarize":
        return ops_.solarize(x, 255.0 * m)
    return {"AutoContrast": ops_.autocontrast, "Equalize": ops_.equalize, "Invert": ops_.invert}[name](x)


def _run_step(x: torch.Tensor, g: torch.Generator, names: list[str], op: torch.Tensor,
              magnitude: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
    """One policy step: sample i gets op names[op[i]] (-1: none) at +-magnitude[i]."""
    B, dev = x.shape[0], x.device
    negate = signed & (torch.rand(B, generator=g, device=dev) <= 0.5)
    m = torch.where(negate, -magnitude, magnitude)
    for k, name in enumerate(names):
        if name == "Identity":
            continue
        chosen = (op == k).view(-1, 1, 1, 1)
        x = torch.where(chosen, apply_op(name, x, m), x)
    return x


def _on(policy, dev, names: tuple) -> list[torch.Tensor]:
    """The policy's tables on `dev`, copied there once (not once per batch)."""
    cache = policy.__dict__.setdefault("_device_tables", {})
    if str(dev) not in cache:
        cache[str(dev)] = [getattr(policy, n).to(dev) for n in names]
    return cache[str(dev)]


class AutoAugmentBatched:
    """v2.AutoAugment(policy) per sample: one of the policy's sub-policies, each
    of its two ops applied with its probability at its magnitude bin (10 bins)."""

    def __init__(self, policy: str, H: int, W: int):
        from torchvision.transforms import v2  # the policy tables are torchvision's own
        table = v2.AutoAugment(v2.AutoAugmentPolicy(policy))._policies
        space = _space(H, W)
        self.names = sorted({name for sub in table for name, _, _ in sub})
        idx = {n: i for i, n in enumerate(self.names)}
        self.op = torch.tensor([[idx[n] for n, _, _ in sub] for sub in table])
        self.prob = torch.tensor([[p for _, p, _ in sub] for sub in table])
        self.magnitude = torch.tensor([[0.0 if b is None else float(space[n][0](10)[b]) for n, _, b in sub]
                                       for sub in table])
        self.signed = torch.tensor([[space[n][1] for n, _, _ in sub] for sub in table])

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        op_t, prob, mag, signed = _on(self, dev, ("op", "prob", "magnitude", "signed"))
        pick = torch.randint(len(op_t), (B,), generator=g, device=dev)
        for step in range(2):
            apply = torch.rand(B, generator=g, device=dev) <= prob[pick, step]
            op = torch.where(apply, op_t[pick, step], -1)
            x = _run_step(x, g, self.names, op, mag[pick, step], signed[pick, step])
        return x


class RandAugmentBatched:
    """v2.RandAugment(num_ops, magnitude=9, 31 bins) per sample: num_ops ops
    drawn uniformly (with replacement) from the op space, random signs."""

    def __init__(self, num_ops: int, H: int, W: int, magnitude: int = 9, bins: int = 31):
        space = _space(H, W)
        self.num_ops = num_ops
        self.names = RANDAUGMENT_OPS
        mags = [space[n][0](bins) for n in self.names]
        self.magnitude = torch.tensor([0.0 if v is None else float(v[magnitude]) for v in mags])
        self.signed = torch.tensor([space[n][1] for n in self.names])

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        B, dev = x.shape[0], x.device
        mag, signed = _on(self, dev, ("magnitude", "signed"))
        for _ in range(self.num_ops):
            op = torch.randint(len(self.names), (B,), generator=g, device=dev)
            x = _run_step(x, g, self.names, op, mag[op], signed[op])
        return x


def chain(*steps: Augment) -> Augment:
    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for step in steps:
            x = step(x, g)
        return x

    return apply


def _checked(pipeline: Augment, info: DatasetInfo) -> Augment:
    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != info.channels:
            raise DataError(f"augment expects uint8 [B, {info.channels}, H, W], got {x.dtype} {tuple(x.shape)}")
        return pipeline(x, g)

    return augment


def _basic(info: DatasetInfo) -> Augment:
    pad, flip = padding_for(info.image_size), "horizontal" in info.flips

    def basic(x, g):
        return random_crop_flip(x, g, pad, flip)

    return basic


def _erase(info: DatasetInfo) -> Augment:
    cut = cutout_for(info.image_size)

    def erase(x, g):
        return cutout(x, g, cut)

    return erase


AUGMENTATIONS.register("none", lambda info: ())
AUGMENTATIONS.register("basic", lambda info: (_basic(info),))
AUGMENTATIONS.register("contrast", lambda info: (_basic(info), color_jitter, random_grayscale))
AUGMENTATIONS.register("auto", lambda info: (
    _basic(info), AutoAugmentBatched(info.autoaugment_policy, info.image_size, info.image_size), _erase(info)))
AUGMENTATIONS.register("rand", lambda info: (
    _basic(info), RandAugmentBatched(4, info.image_size, info.image_size), _erase(info)))


def make_augment(name: str, info: DatasetInfo) -> Augment:
    """An augmentation: (uint8 [B,C,H,W], generator on its device) -> uint8 batch,
    same shape/device. Batched on the device: no per-sample Python, no host sync."""
    return _checked(chain(*AUGMENTATIONS.get(name)(info)), info)


# --- the reference path ------------------------------------------------------------
# torchvision's own transforms, one image at a time: what the paper's code does
# in its DataLoader. Tests compare the batched path's statistics to it, and
# `lth-sweep bench` times it as the reference recipe.

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


def reference_transform(name: str, info: DatasetInfo):
    """torchvision.transforms.v2 pipeline of `name` for one uint8 image [C,H,W]."""
    AUGMENTATIONS.get(name)  # an unknown name gets the registry's error, not a KeyError below
    from torchvision.transforms import v2
    S = info.image_size
    basic = [v2.RandomCrop(S, padding=padding_for(S))]
    if "horizontal" in info.flips:
        basic.append(v2.RandomHorizontalFlip(0.5))
    cut = cutout_for(S)
    # Cutout: v2.RandomErasing can't fix the square's size, so it stays ours (per image).
    erase = [lambda img: cutout(img[None], torch.default_generator, cut)[0]]
    steps = {
        "none": [],
        "basic": basic,
        "contrast": basic + [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                             v2.RandomGrayscale(p=0.2)],
        "auto": basic + [v2.AutoAugment(v2.AutoAugmentPolicy(info.autoaugment_policy))] + erase,
        "rand": basic + [v2.RandAugment(num_ops=4)] + erase,
    }[name]
    return v2.Compose(steps)


def reference_augment(name: str, info: DatasetInfo) -> Augment:
    """The same augmentation through torchvision, image by image (the slow reference)."""
    return _checked(per_sample(reference_transform(name, info)), info)
