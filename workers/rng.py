"""Random streams: one seed per purpose, derived from the trial's seed.

Nothing random is carried from one step of a lineage to the next: each
stream is seeded afresh from integers, so any point of a lineage can be
recomputed (resumed) without replaying what came before it.

    seed_for(seed, round, epoch)   an epoch's shuffle and augmentation
    seed_for(seed, MODEL_INIT)     the network's initial weights
    seed_for(seed, round, PRUNE)   a round's random mask draw
    seed_for(seed, round, REBUILD) a network built afresh in a later round

The tag values are part of every committed lineage's bits: never renumber them.
"""
from __future__ import annotations

import hashlib
import json

MODEL_INIT = -1
PRUNE = -1
REBUILD = -2


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers: independent streams per (seed, round, epoch)."""
    h = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1
