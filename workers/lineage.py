"""One IMP lineage: start -> train -> evaluate -> commit, per round.

`run_lineage(spec, store)` is a plain function (no Ray) that the Tune trainable
wraps and tests call: a group of one (workers/group.py). Resume is free because
every phase first looks at storage: committed rounds are skipped (after
verifying the files the next round reads), a round in flight goes on from its
newest mid-round checkpoint (workers/round.py).
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
    """Run (or finish) the IMP lineage of `spec`, committing each round to `store`; returns every
    committed round's metrics in order, or raises what the lineage failed with. `where`: where it runs
    (`node`, `gpu_ids`) for the result rows; `on_round(metrics)` after each newly committed round,
    `on_epoch({trial_id, round, epoch, epochs})` now and then within a round (progress displays)."""
    return run_group([(spec, store)], opts, where, on_round, on_epoch)[store.trial_id]
