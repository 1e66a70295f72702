"""Evaluations after a lineage: one file per kind, each registering an
`Evaluation` (base.py) that owns its yaml key, table, results columns and
report views; adding one is a file plus its import line below.

    robustness  CIFAR-10-C / CIFAR-10.2 accuracy of selected rounds
    probe       linear-probe transfer of the dense network and the tickets
    cka         linear CKA between them, layer by layer

The winning tickets are those of every selection protocol (workers/selection.py),
so a query can switch protocols without a rerun.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from workers.spec import RunOptions, TrialSpec
from workers.store import LineageStore
from workers.train import pick_device

from .base import EVALUATIONS, Evaluation, current_doc, digests, model_at, register

# Each module registers its evaluation, in report order among those sharing a place.
from . import robustness  # noqa: E402,F401
from . import probe  # noqa: E402,F401
from . import cka  # noqa: E402,F401

log = logging.getLogger("lth_sweep.evaluations")


def evaluation_of_file(name: str) -> Evaluation:
    """The evaluation an analysis file belongs to ("robustness_cifar10c" -> robustness);
    a name no registered evaluation writes raises `UnknownName`."""
    return EVALUATIONS.get(name.partition("_")[0])


def check_options(opts: RunOptions) -> None:
    """Refuse an `analysis` key no registered evaluation declares (one line), so a
    typo never silently evaluates nothing; the yaml is checked in orchestrator/config.py."""
    keys = {e.option for e in EVALUATIONS.values()}
    for key, _ in opts.analysis:
        if key not in keys:
            raise ValueError(f"unknown analysis key {key!r}; known: {', '.join(sorted(keys))}")


def wanted(opts: RunOptions) -> list[str]:
    """The analysis files this trial's options ask for."""
    check_options(opts)
    return [f for e in EVALUATIONS.values() for f in e.files(opts)]


def current(store: LineageStore, name: str, rounds: Optional[list[int]] = None) -> Optional[dict]:
    return current_doc(store, name, rounds)


def _stale(spec: TrialSpec, store: LineageStore, opts: RunOptions) -> tuple[list[str], list[dict]]:
    if not wanted(opts):
        return [], []
    metrics = [store.read_manifest(k)["metrics"] for k in range(spec.num_rounds)]
    return [n for n in wanted(opts) if current(store, n, evaluation_of_file(n).rounds(metrics)) is None], metrics


def run_evaluations(spec: TrialSpec, store: LineageStore, opts: RunOptions,
                    device: Optional[torch.device] = None) -> list[str]:
    """Compute every requested evaluation that is missing or stale; returns their names."""
    names, metrics = _stale(spec, store, opts)
    if not names:
        return []
    device = device or pick_device(opts, {})
    for name in names:
        ev = evaluation_of_file(name)
        rows = ev.compute(name, spec, store, metrics, opts, device)
        store.write_analysis(name, {"rounds": digests(store, ev.rounds(metrics)), "rows": rows})
        log.info("trial %s: %s written (%d rows)", store.trial_id, name, len(rows))
    return names


def pending(spec: TrialSpec, store: LineageStore, opts: RunOptions) -> bool:
    """Whether a trial whose lineage is finished still has evaluations to run."""
    return bool(_stale(spec, store, opts)[0])


def preflight(trials: list[tuple[TrialSpec, RunOptions]]) -> None:
    for ev in EVALUATIONS.values():
        ev.preflight(trials)


__all__ = ["EVALUATIONS", "Evaluation", "check_options", "current", "evaluation_of_file", "model_at", "pending",
           "preflight", "register", "run_evaluations", "wanted"]
