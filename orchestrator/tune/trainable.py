"""What one Tune trial runs, without Tune: a unit's config (plain data: specs,
options, where its storage is) -> frozen specs -> workers/group.py `run_group`
(a lineage is a group of one) -> each lineage's evaluations.

Imports only workers.*: the trial process needs neither the driver nor the
results table, and a test calls `run_unit` with a report function of its own.
"""
from __future__ import annotations

from typing import Callable

from workers.evaluations import run_evaluations
from workers.group import run_group
from workers.spec import RunOptions, TrialSpec
from workers.store import SweepStore


def run_unit(unit: dict, where: dict, report: Callable[[dict], None], progress: Callable[[dict], None]) -> None:
    """Run (or continue) the unit's lineages to their last round, then their
    evaluations. `report(metrics)` is called per committed round (a manifest's
    metrics), `progress({"trial_id", "round", "epoch", "epochs"})` per epoch, and
    `report({"trial_id", "evaluations": True})` once a lineage's evaluations are written.
    `where`: {"node", "gpu_ids"} as recorded in each round."""
    sweep = SweepStore(unit["storage"], unit["sweep"])
    members = [(TrialSpec.from_dict(m), sweep.lineage(tid)) for tid, m in unit["members"].items()]
    gpu = unit.get("gpu", 0)
    if 0 < gpu < 1:
        # Packed trials: cap this process's share of the GPU so neighbours
        # on the same device cannot starve it (or be starved).
        import torch
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(gpu)
    for _, store in members:
        store.clear_marker(store.FAILED)
    opts = RunOptions(**unit["options"])
    # One lineage is a group of one (workers/group.py): it raises its own error.
    run_group(members, opts, where, on_round=report, on_epoch=progress)
    for spec, store in members:
        if run_evaluations(spec, store, opts):
            report({"trial_id": spec.trial_id, "evaluations": True})
