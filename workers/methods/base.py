"""What a method is, and how it starts each round of its lineage.

A method is IMP with one thing changed: how each round starts (its mask,
its weights), the network's convolutions (variant), its classifier head, or
its loss. The round loop (workers/lineage.py) asks the trial's method for
each round's `RoundStart` and then trains, evaluates and commits it the same
way for every method; a method owns nothing else.

`start_round(k, ctx)` sees the lineage through its context (workers/lineage.py
`LineageContext`): the lineage's network `ctx.model`, its prunable names
`ctx.names`, the verified state of committed rounds `ctx.previous(k)` and
`ctx.rewind_state()`, a seeded generator per round `ctx.generator(k)`, and,
for methods built from another lineage, `ctx.parent`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from workers import pruning
from workers.models import make_model, model_state
from workers.registry import Registry
from workers.rng import MODEL_INIT, seed_for


@dataclass
class RoundStart:
    """How round k begins. `copy_from` set: the round is not trained but taken
    over (verified) from that lineage's round k."""
    model: Optional[torch.nn.Module] = None
    masks: Optional[dict] = None
    first_epoch: int = 0          # the epoch training starts at (the LR schedule resumes there)
    # The state later rounds rewind to; None in round 0: captured while it trains.
    rewind: Optional[dict] = None
    extra: dict = field(default_factory=dict)  # metrics the method adds to the round's row
    copy_from: object = None      # a LineageStore


@dataclass(frozen=True)
class Method:
    name: str
    variant: str = "standard"     # workers.models.variants
    head: str = "linear"          # workers.losses.make_head
    loss: str = "cross_entropy"   # workers.losses.LOSSES
    # The method whose finished lineage of the same grid point this one is built from.
    parent: Optional[str] = None
    # A capacity/connectivity control of IMP's ticket (the report compares them with it).
    control: bool = False

    # --- the network ------------------------------------------------------
    def model(self, spec, info, opts=None, *, width: Optional[float] = None, with_init: bool = True,
              seed: Optional[int] = None) -> torch.nn.Module:
        """The trial's network at its initialisation, seeded so a resume rebuilds it."""
        torch.manual_seed(seed_for(spec.seed, MODEL_INIT) if seed is None else seed)
        return make_model(spec, info, variant=self.variant, head=self.head, width=width,
                          init_path=getattr(opts, "init_path", None), with_init=with_init)

    # --- rounds -----------------------------------------------------------
    def start_round(self, k: int, ctx) -> RoundStart:
        """IMP: round 0 is the dense network from its initialisation; round k
        prunes round k-1's trained weights (`next_masks`) and rewinds to the
        state saved after `rewind_epoch` epochs of round 0."""
        prune = ctx.spec.prune
        if k == 0:
            return RoundStart(ctx.model, pruning.full_masks(ctx.model, ctx.names), first_epoch=0,
                              rewind=model_state(ctx.model) if prune.rewind_epoch == 0 else None)
        weights, previous = ctx.previous(k - 1)
        ctx.model.load_state_dict(weights)
        masks = self.next_masks(ctx.model, previous, prune.rate, ctx.generator(k))
        rewind = ctx.rewind_state()
        ctx.model.load_state_dict(rewind)
        return RoundStart(ctx.model, masks, first_epoch=prune.rewind_epoch, rewind=rewind)

    def next_masks(self, model, masks: dict, rate: float, generator: torch.Generator) -> dict:
        """Round k's mask from round k-1's: global L1 magnitude pruning of `rate`
        of the surviving weights, over the trained weights in `model`."""
        return pruning.global_magnitude_prune(model, masks, rate)


class ParentMissing(Exception):
    """A trial built from another lineage whose lineage is not (fully) committed."""


@dataclass(frozen=True)
class FromParent(Method):
    """A control built from the finished `imp` lineage of the same grid point
    (its parent): it shares the parent's round 0, copied, not retrained, and
    makes its later rounds from the parent's."""
    parent: Optional[str] = "imp"

    def start_round(self, k: int, ctx) -> RoundStart:
        if k == 0:
            return RoundStart(copy_from=ctx.parent)
        return self.from_parent(k, ctx)

    def from_parent(self, k: int, ctx) -> RoundStart:
        raise NotImplementedError


def parent_spec(spec):
    """The trial spec of the lineage a parent-built trial is made from."""
    parent = get_method(spec.prune.method).parent
    return dataclasses.replace(spec, prune=dataclasses.replace(spec.prune, method=parent))


# ValueError: what callers caught before the registry (an unknown name is a bad argument).
METHODS: Registry[Method] = Registry("method", error=ValueError)


def register(method: Method) -> Method:
    return METHODS.register(method.name, method)


def trial_model(spec, info, opts=None, **kw) -> torch.nn.Module:
    """The network of a trial at its initialisation (kw: width, with_init, seed)."""
    return get_method(spec.prune.method).model(spec, info, opts, **kw)


def get_method(name: str) -> Method:
    return METHODS.get(name)
