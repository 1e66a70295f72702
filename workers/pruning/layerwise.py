"""Layer-wise random reinitialisation of a ticket's mask: the control that keeps
*how many* weights each layer has and throws away *which* ones.

This is the "random shuffling within each layer" ablation of Frankle et al.,
"Pruning Neural Networks at Initialization: Why Are We Missing the Mark?"
(ICLR 2021): a mask with the same per-layer densities as the ticket but
uniformly random positions inside each layer. If it matches the ticket, the ticket's
value is its layer-wise sparsity profile, not its exact connectivity.
Global random pruning (`random.py`) differs: it also loses the profile.
"""
from __future__ import annotations

import torch

from .masks import Masks


def _random_layer_mask(like: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """A bool mask shaped like `like` with exactly `keep` True entries at
    uniformly random positions (a random permutation's first `keep` indices)."""
    flat = torch.zeros(like.numel(), dtype=torch.bool)
    flat[torch.randperm(like.numel(), generator=generator)[:keep]] = True
    return flat.reshape(like.shape).to(like.device)


def layerwise_random_masks(parent_masks: Masks, generator: torch.Generator) -> Masks:
    """Random masks with exactly the parent's number of kept weights in every
    layer (hence exactly its per-layer and overall densities), positions
    uniform within each layer.

    Layers are drawn in the parent's key order from one CPU `generator`, so
    the result depends only on the generator's state (the same on every
    device). Keys, order, shapes and devices follow the parent; dtype bool."""
    out = {}
    for name, m in parent_masks.items():
        out[name] = _random_layer_mask(m, int(m.sum()), generator)
    return out


__all__ = ["layerwise_random_masks"]
