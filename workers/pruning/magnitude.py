"""Global L1 magnitude pruning (IMP's pruning step).

All prunable layers compete together: one concatenated score vector, one
k-th value. Per-layer pruning would give every layer the same density; global
pruning lets layers with small weights (e.g. the wide late convs) become much
sparser than the stem, which is what the paper does.
"""
from __future__ import annotations

import torch
from torch import nn

from .masks import Masks, num_to_prune, split_like


@torch.no_grad()
def global_magnitude_prune(model: nn.Module, masks: Masks, rate: float) -> Masks:
    """Remove k = round(rate * remaining) surviving weights, those with the
    smallest |w|; ties at the threshold go by flat index (first ones pruned).
    Pruned weights stay pruned. Returns new masks; inputs are not modified."""
    params = dict(model.named_parameters())
    names = list(masks)
    alive = torch.cat([masks[n].reshape(-1) for n in names])
    k = num_to_prune(int(alive.sum()), rate)
    if k == 0:
        return {n: masks[n].clone() for n in names}
    device = alive.device
    # Already-pruned weights score +inf so they are never among the k smallest;
    # since k <= remaining, the k-th value is finite.
    scores = torch.cat([params[n].detach().reshape(-1).abs().float().to(device)
                        for n in names])
    scores.masked_fill_(~alive, float("inf"))
    threshold = scores.kthvalue(k).values
    prune = scores < threshold
    # Exactly k: fill up with the weights equal to the threshold, lowest flat
    # index first (nonzero returns indices in ascending order).
    need = k - int(prune.sum())
    ties = (scores == threshold).nonzero().reshape(-1)[:need]
    prune[ties] = True
    new_alive = alive & ~prune
    return split_like(new_alive, masks)
