"""Masks: which weights are prunable, how dense they are, how they are stored,
and how pruned weights are kept at exactly zero during training.

A mask set is a dict param-name -> bool tensor of the param's shape, in model
order (the order of `prunable_names`). True = the weight survives.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

Masks = dict[str, torch.Tensor]

# Module types each token of the `prunable` setting adds (their `.weight` only:
# biases, BatchNorm and anything else are never pruned).
_PRUNABLE_KINDS = {"conv": nn.Conv2d, "linear": nn.Linear}
PRUNABLE_SETS = ("conv", "conv+linear")  # the `imp.prunable` settings experiments may use
_SHAPE_SUFFIX = ".__shape__"


def prunable_names(model: nn.Module, prunable: str = "conv") -> list[str]:
    """Names of the prunable weights, in model order. `prunable` is "conv"
    (the paper: every Conv2d weight, stem and shortcuts included) or a
    "+"-joined set such as "conv+linear"."""
    tokens = prunable.split("+")
    unknown = [t for t in tokens if t not in _PRUNABLE_KINDS]
    if not tokens or unknown:
        raise ValueError(f"unknown prunable set {prunable!r}; use tokens of "
                         f"{sorted(_PRUNABLE_KINDS)} joined by '+'")
    kinds = tuple(_PRUNABLE_KINDS[t] for t in tokens)
    return [f"{name}.weight" if name else "weight"
            for name, m in model.named_modules() if isinstance(m, kinds)]


def full_masks(model: nn.Module, names: list[str]) -> Masks:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool,
                               memory_format=torch.contiguous_format) for n in names}


def num_to_prune(remaining: int, rate: float) -> int:
    """k = round(rate * remaining): the one rounding rule of every strategy."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"prune rate must be in [0, 1], got {rate}")
    return int(round(rate * remaining))


def split_like(flat: torch.Tensor, masks: Masks) -> Masks:
    """Cut one concatenated mask back into per-layer masks shaped (and placed) like `masks`."""
    out, start = {}, 0
    for n, m in masks.items():
        out[n] = flat[start:start + m.numel()].reshape(m.shape).to(m.device)
        start += m.numel()
    return out


def density(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    alive = sum(int(m.sum()) for m in masks.values())
    return alive / total if total else 1.0


def layer_densities(masks: Masks) -> list[dict]:
    return [{"layer": n, "density": int(m.sum()) / m.numel() if m.numel() else 1.0,
             "numel": m.numel()} for n, m in masks.items()]


def pack_masks(masks: Masks) -> dict[str, torch.Tensor]:
    """Bit-pack (8 mask bits per byte) into a flat dict of tensors that
    safetensors can store: `name` -> uint8 bits, `name.__shape__` -> int64 shape.
    An 11M-weight ResNet-18 mask set is ~1.4 MB instead of 11 MB of bools."""
    out = {}
    for n, m in masks.items():
        bits = np.packbits(m.detach().to("cpu", torch.bool).reshape(-1).numpy())
        out[n] = torch.from_numpy(bits)
        out[n + _SHAPE_SUFFIX] = torch.tensor(list(m.shape), dtype=torch.int64)
    return out


def unpack_masks(packed: dict[str, torch.Tensor]) -> Masks:
    out = {}
    for n, bits in packed.items():
        if n.endswith(_SHAPE_SUFFIX):
            continue
        shape = [int(s) for s in packed[n + _SHAPE_SUFFIX].tolist()]
        flat = np.unpackbits(bits.numpy(), count=math.prod(shape)).astype(bool)
        out[n] = torch.from_numpy(flat).reshape(shape)
    return out


class MaskApplier:
    """Keeps pruned weights exactly zero: one fused op per call, not forward hooks.

    Call `apply()` once after the masks are installed and after every
    optimizer step. Multiplying by a 0/1 mask gives exact zeros. The model's
    parameters must not be moved (`.to(...)`) after construction."""

    def __init__(self, model: nn.Module, masks: Masks, optimizer=None):
        params = dict(model.named_parameters())
        self.params = [params[n] for n in masks]
        # Float masks in each param's dtype, device and memory format
        # (channels_last too), so the foreach multiply needs no conversion.
        self.masks = [torch.empty_like(p).copy_(masks[n])
                      for n, p in zip(masks, self.params)]
        self.optimizer = optimizer

    def apply(self) -> None:
        apply_masks(self.params, self.masks, self.optimizer)


@torch.no_grad()
def apply_masks(params: list[torch.Tensor], masks: list[torch.Tensor], optimizer=None) -> None:
    """params *= masks in one fused op, then the same for the SGD momentum buffers
    of those params. SGD creates its buffers lazily at the first step, so they
    are looked up on each call; the gradient (and weight decay) at a pruned
    position is not zero, so a buffer would otherwise keep a velocity there.

    A negative weight times 0 is -0.0: adding +0.0 after the multiply turns
    every -0.0 into +0.0 and changes no other value, so pruned positions hold
    the one bit pattern of +0.0 (what workers/checkpoint.py stores them as)."""
    torch._foreach_mul_(params, masks)
    torch._foreach_add_(params, 0.0)
    if optimizer is None:
        return
    bufs, bmasks = [], []
    for p, m in zip(params, masks):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            bufs.append(buf)
            bmasks.append(m)
    if bufs:
        torch._foreach_mul_(bufs, bmasks)
        torch._foreach_add_(bufs, 0.0)
