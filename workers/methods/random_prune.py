"""`random_prune`: the capacity control. The same density schedule as IMP and
the same rewinding, but each round removes surviving weights chosen
uniformly at random over all layers (seeded per round), not by magnitude."""
from __future__ import annotations

from dataclasses import dataclass

from workers import pruning

from .base import Method, register


@dataclass(frozen=True)
class RandomPrune(Method):
    def next_masks(self, model, masks, rate, generator):
        return pruning.random_prune(masks, rate, generator)


METHOD = register(RandomPrune("random_prune", control=True))
