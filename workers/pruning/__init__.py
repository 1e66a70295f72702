"""Pruning: prunable set, masks, global magnitude / random pruning, and the
mask applier that keeps pruned weights at zero. Masks are dicts
param-name -> bool tensor (True = kept), in model order."""
from __future__ import annotations

from .magnitude import global_magnitude_prune
from .masks import (Masks, MaskApplier, density, full_masks, layer_densities,
                    num_to_prune, pack_masks, prunable_names, unpack_masks)
from .random import random_prune

# Pruning strategies by name: f(model, masks, rate, generator) -> new masks.
STRATEGIES = {
    "magnitude": lambda model, masks, rate, generator=None:
        global_magnitude_prune(model, masks, rate),
    "random": lambda model, masks, rate, generator=None:
        random_prune(masks, rate, generator),
}

__all__ = ["Masks", "MaskApplier", "STRATEGIES", "density", "full_masks",
           "global_magnitude_prune", "layer_densities", "num_to_prune",
           "pack_masks", "prunable_names", "random_prune", "unpack_masks"]
