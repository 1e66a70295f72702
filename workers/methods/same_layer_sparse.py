"""`same_layer_sparse`: the connectivity control. Round k takes random masks
with exactly the parent imp ticket's round-k number of kept weights in every
layer (so its per-layer and overall densities), positions uniform within
each layer, and trains them from this lineage's rewind state (the parent's,
since round 0 is shared). Same profile, other connections."""
from __future__ import annotations

from dataclasses import dataclass

from workers.pruning.layerwise import layerwise_random_masks

from .base import FromParent, RoundStart, register


@dataclass(frozen=True)
class SameLayerSparse(FromParent):
    def from_parent(self, k, ctx) -> RoundStart:
        masks = layerwise_random_masks(ctx.parent_masks(k), ctx.generator(k))
        rewind = ctx.rewind_state()
        ctx.model.load_state_dict(rewind)
        return RoundStart(ctx.model, masks, first_epoch=ctx.spec.prune.rewind_epoch, rewind=rewind)


METHOD = register(SameLayerSparse("same_layer_sparse", control=True))
