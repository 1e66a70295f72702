"""Methods: what a trial's `method` means, one entry per name.

A method is IMP with one thing changed: how each round's mask is made, the
network's convolutions (variant), its classifier head, or its loss. Every
entry says exactly that, so each name demonstrably is what it says (the
paper's released code trained a plain ResNet under several of these names).

    imp            global L1 magnitude pruning; round 0 is the dense baseline
    random_prune   global random pruning on the same density schedule
    cosine_loss    IMP trained with the cosine loss (+ 0.1 cross-entropy)
    tvmf_loss      IMP with a t-vMF similarity head (kappa 16), cross-entropy
    full_conv      IMP on full convolutions (padding 2 on 3x3 convs)
    harmonic       IMP on harmonic blocks (fixed DCT basis + learned 1x1 mixing;
                   IMP prunes the mixing weights, never the basis)
"""
from __future__ import annotations

from dataclasses import dataclass

from workers import pruning as P


@dataclass(frozen=True)
class Method:
    name: str
    mask: str = "magnitude"  # key of MASKS: how round k's mask comes from round k-1
    variant: str = "standard"  # workers.models.variants
    head: str = "linear"  # workers.losses.make_head
    loss: str = "cross_entropy"  # workers.losses.LOSSES


# mask kind -> f(model, previous masks, rate, generator) -> masks
MASKS = {
    "magnitude": lambda model, masks, rate, gen: P.global_magnitude_prune(model, masks, rate),
    "random": lambda model, masks, rate, gen: P.random_prune(masks, rate, gen),
}

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("imp"),
    Method("random_prune", mask="random"),
    Method("cosine_loss", loss="cosine"),
    Method("tvmf_loss", head="tvmf", loss="tvmf"),
    Method("full_conv", variant="full_conv"),
    Method("harmonic", variant="harmonic"),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["MASKS", "METHODS", "Method", "get_method"]
