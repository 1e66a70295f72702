"""Pruning: prunable set, masks, global magnitude / random pruning, and the
mask applier that keeps pruned weights at zero. Masks are dicts
param-name -> bool tensor (True = kept), in model order. Which strategy a
round uses belongs to the trial's method (workers/methods/)."""
from __future__ import annotations

from .magnitude import global_magnitude_prune
from .masks import (PRUNABLE_SETS, Masks, MaskApplier, apply_masks, density, full_masks, layer_densities,
                    num_to_prune, pack_masks, prunable_names, unpack_masks)
from .random import random_prune

__all__ = ["PRUNABLE_SETS", "Masks", "MaskApplier", "apply_masks", "density", "full_masks",
           "global_magnitude_prune", "layer_densities", "num_to_prune",
           "pack_masks", "prunable_names", "random_prune", "unpack_masks"]
