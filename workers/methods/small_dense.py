"""`small_dense`: the capacity control that is not sparse at all. Round k is a
dense network whose width is chosen (over the architecture's channel
rounding) so its parameter count matches the parent imp ticket's round-k
count within 1%, trained from scratch for every epoch. Its row's `density`
is the ticket's it is matched to; `width` is its own."""
from __future__ import annotations

from dataclasses import dataclass

from workers import pruning
from workers.pruning.matching import matching_width, param_count
from workers.rng import REBUILD, seed_for

from .base import FromParent, RoundStart, get_method, parent_spec, register


@dataclass(frozen=True)
class SmallDense(FromParent):
    def from_parent(self, k, ctx) -> RoundStart:
        spec, info = ctx.spec, ctx.info
        pm = ctx.parent_masks(k)
        ticket = get_method(self.parent).model(parent_spec(spec), info, with_init=False)
        prunable = sum(m.numel() for m in pm.values())
        kept = sum(int(m.sum()) for m in pm.values())
        target = param_count(ticket) - prunable + kept

        def build(width):
            return self.model(spec, info, width=width, with_init=False, seed=seed)

        seed = seed_for(spec.seed, k, REBUILD)
        width = matching_width(build, target, hi=spec.model.width)
        model = build(width).to(ctx.device)
        masks = pruning.full_masks(model, pruning.prunable_names(model, spec.prune.prunable))
        return RoundStart(model, masks, first_epoch=0, extra={
            "density": kept / prunable, "width": width, "params": param_count(model), "ticket_params": target})


METHOD = register(SmallDense("small_dense", control=True))
