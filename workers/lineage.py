"""One IMP lineage: start -> train -> evaluate -> commit, per round.

`run_lineage(spec, store)` is a plain function (no Ray): the orchestrator's
Tune trainable is a thin adapter around it, and tests call it directly. It
is a group of one (workers/group.py): a lone lineage and a fused member run
the same round loop, the same epoch loop and the same commit.

Resume is free because every phase first looks at storage: committed rounds
are skipped (after verifying the files the next round reads), a round in
flight continues from its newest mid-round checkpoint (workers/round.py).
How each round starts belongs to the trial's method (workers/methods/); how
it trains and commits is the same for all of them.
"""
from __future__ import annotations

from typing import Callable, Optional

from workers.context import LineageContext  # noqa: F401  (what methods and tests read)
from workers.group import run_group
from workers.spec import RunOptions, TrialSpec
from workers.store import LineageStore


def run_lineage(spec: TrialSpec, store: LineageStore, opts: Optional[RunOptions] = None,
                where: Optional[dict] = None,
                on_round: Optional[Callable[[dict], None]] = None,
                on_epoch: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Run (or finish) the IMP lineage of `spec`, committing each round to `store`.

    `where` says where it runs (`node`, `gpu_ids`) for the result rows;
    `on_round(metrics)` is called after each newly committed round, and
    `on_epoch({trial_id, round, epoch, epochs})` now and then within a round
    (for progress displays). Returns the metrics of every committed round, in
    order; raises what the lineage failed with.
    """
    return run_group([(spec, store)], opts, where, on_round, on_epoch)[store.trial_id]
