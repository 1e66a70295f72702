"""Global random pruning: the control that IMP's tickets are compared against.

(This module is `workers.pruning.random`; with absolute imports it never
shadows the standard library's `random`.)
"""
from __future__ import annotations

import torch

from .masks import Masks, num_to_prune, split_like


def random_prune(masks: Masks, rate: float, generator: torch.Generator) -> Masks:
    """Remove exactly k = round(rate * remaining) surviving weights chosen
    uniformly over all layers together. The draw happens on CPU with
    `generator`, so the result depends only on the generator's state."""
    names = list(masks)
    alive = torch.cat([masks[n].reshape(-1).cpu() for n in names])
    survivors = alive.nonzero().reshape(-1)
    k = num_to_prune(survivors.numel(), rate)
    chosen = survivors[torch.randperm(survivors.numel(), generator=generator)[:k]]
    new_alive = alive.clone()
    new_alive[chosen] = False
    return split_like(new_alive, masks)
