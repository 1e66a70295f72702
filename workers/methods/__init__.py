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

Two methods are built from a finished `imp` lineage of the same grid point
(its "parent", read from storage; the driver runs them after their parents):

    same_layer_sparse  round k: random masks with exactly the parent's round-k
                       per-layer densities, trained from the parent's rewind state
    small_dense        round k: a dense network whose width is chosen so its
                       parameter count matches the parent's round-k ticket,
                       trained from scratch for all epochs

Both share the parent's round 0 (the same dense network, copied, not retrained).
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
    parent: bool = False  # built from the committed `imp` lineage of the same grid point


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
    Method("same_layer_sparse", mask="same_layer", parent=True),
    Method("small_dense", mask="dense_matched", parent=True),
)}


def parent_spec(spec):
    """The `imp` lineage a parent-dependent trial is built from."""
    import dataclasses
    return dataclasses.replace(spec, prune=dataclasses.replace(spec.prune, method="imp"))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["MASKS", "METHODS", "Method", "get_method", "parent_spec"]
