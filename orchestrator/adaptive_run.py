"""Running an adaptive sweep (orchestrator/adaptive.py decides): batch after
batch, the driver runs the trials the decisions so far plan; what each batch
decided is logged per cell (which cells get more seeds, and why)."""
from __future__ import annotations

from typing import Optional

from orchestrator import sequential

from orchestrator.adaptive import (AT_MAX, BUDGET, RESOLVED, WAITING, Cell, Settings, by_cell, cell_gains, decide,
                                   gains_by_trial, write_state)


def cost_range(settings: Settings, costs: dict[str, float], budget: Optional[float] = None) -> dict:
    """The least and the most the study can cost: every cell resolved at the
    first batch where a claim can resolve at all (sequential.earliest), and
    every cell run to `max` (or the budget, if lower)."""
    per_cell = sum(costs.values())
    first = sequential.earliest(settings.alpha, len(costs))
    least = next((n for n in settings.checkpoints() if n >= first), settings.max)
    high = settings.max * per_cell
    return {"cells": len(costs), "earliest": first, "lineages_min": least * len(costs),
            "lineages_max": settings.max * len(costs), "device_hours_min": least * per_cell,
            "device_hours_max": high if budget is None else min(high, budget), "budget_gpu_h": budget}


def check_budget(settings: Settings, costs: dict[str, float], budget: Optional[float]) -> None:
    """A budget below the first batch (every cell at `start` seeds) is refused: ValueError."""
    first = settings.start * sum(costs.values())
    if budget is not None and budget < first:
        raise ValueError(f"--budget-gpu-h {budget:g} is below the first batch's estimate ({first:.3g} device-hours "
                         f"for {settings.start} seeds of each of {len(costs)} cells)")


def cell_costs(trials: list) -> dict[str, float]:
    """cell_id -> estimated device-hours of one of its lineages (orchestrator/costs.py, as `plan`)."""
    from orchestrator.costs import estimate
    first: dict = {}
    for t in trials:
        first.setdefault(t.spec.cell_id, t)
    return {c: estimate([t])["device_s"] / 3600 for c, t in first.items()}


def planned(trials: list, state: dict[str, Cell]) -> list:
    """The trials of the decided plan: seeds 0 .. n - 1 of every cell, and the
    lineage each parent-built trial is made from (same_layer_sparse's imp
    lineage of the same seed), whatever its own cell decided."""
    from workers.methods import METHODS, parent_spec
    ids = {t.trial_id for t in trials if t.spec.seed < state[t.spec.cell_id].n}
    ids |= {parent_spec(t.spec).trial_id for t in trials
            if t.trial_id in ids and METHODS[t.spec.prune.method].parent}
    return [t for t in trials if t.trial_id in ids]


def cell_names(trials: list) -> dict[str, str]:
    """cell -> the grid axes its cells differ in, as words (`images_per_class=5 augmentation=basic`)."""
    rows: dict[str, dict] = {}
    for t in trials:
        if t.spec.cell_id not in rows:
            rows[t.spec.cell_id] = {k: v for k, v in t.row().items() if k not in ("trial_id", "seed", "resources")}
    keys = [k for k in next(iter(rows.values()), {}) if len({repr(r[k]) for r in rows.values()}) > 1]
    return {c: " ".join(f"{k}={r[k]}" for k in keys) or c for c, r in rows.items()}


def changes(state: dict[str, Cell], before: dict[str, tuple], names: dict[str, str], effect: float) -> list[str]:
    """One line per cell whose decision changed since `before` (cell -> (n, status)):
    which cells get more seeds, and why."""
    out = []
    for c, cell in state.items():
        if before.get(c) == (cell.n, cell.status) or cell.verdict is None:
            continue
        v = cell.verdict
        why = (f"gain {v.mean:+.4f} over {v.n} seeds, anytime-valid interval [{v.low:+.4f}, {v.high:+.4f}] "
               f"{'excludes' if v.resolved else 'holds'} {effect:g}")
        then = {RESOLVED: f"resolved at {v.n} seeds: {cell.claim}", AT_MAX: f"open at max ({cell.n} seeds)",
                BUDGET: "open: the budget is spent", WAITING: f"open: {cell.n - v.n} seeds more ({cell.n})"}
        out.append(f"  {names.get(c, c)}: {why}; {then.get(cell.status, cell.status)}")
    return out


def counts_line(state: dict[str, Cell]) -> str:
    by: dict[str, int] = {}
    for cell in state.values():
        by[cell.status] = by.get(cell.status, 0) + 1
    lineages = sum(cell.n for cell in state.values())
    counts = ", ".join(f"{v} {k}" for k, v in sorted(by.items()))
    return f"{lineages} lineages planned over {len(state)} cells; {counts}"


def stored_gains(sweep) -> dict[str, Optional[float]]:
    """Gains of the sweep's finished lineages, from its results table."""
    from orchestrator.results import ResultsError, results_dataset
    if not sweep.exists():
        return {}
    try:
        rows = results_dataset(sweep)
    except (ResultsError, FileNotFoundError):  # nothing committed yet
        return {}
    if (rows.num_rows if hasattr(rows, "num_rows") else rows.count_rows()) == 0:
        return {}
    return gains_by_trial(rows)


def parent_cells(trials: list) -> dict[str, str]:
    """A parent-built trial's cell -> the cell of the lineages it is made from."""
    from workers.methods import METHODS, parent_spec
    return {t.spec.cell_id: parent_spec(t.spec).cell_id for t in trials if METHODS[t.spec.prune.method].parent}


def plan_from_storage(sweep, trials: list, settings: Settings, budget: Optional[float]):
    """(the trials the decisions so far plan, cell -> Cell, finished), replayed from storage."""
    cells, costs = by_cell(trials), cell_costs(trials)
    state, finished = decide(cell_gains(cells, stored_gains(sweep)), settings, costs, budget, parent_cells(trials))
    return planned(trials, state), state, finished


def run(request, settings: Settings, budget: Optional[float]) -> tuple[int, list]:
    """Run an adaptive sweep to its end (or resume it): decide from storage, run
    the batch, decide again. Returns (exit status, the trials of the final plan)."""
    import dataclasses

    from orchestrator.driver import run_sweep
    from workers.lease import log
    from workers.store import SweepStore
    trials = request.trials
    sweep = SweepStore(request.storage, request.sweep_name)
    cells, costs, names, parents = by_cell(trials), cell_costs(trials), cell_names(trials), parent_cells(trials)
    last, before = None, {}
    while True:
        state, finished = decide(cell_gains(cells, stored_gains(sweep)), settings, costs, budget, parents)
        plan = planned(trials, state)
        log(f"{settings.words()}: {counts_line(state)}")
        for line in changes(state, before, names, settings.effect):
            print(line, flush=True)
        before = {c: (cell.n, cell.status) for c, cell in state.items()}
        if finished:
            write_state(sweep, settings, cells, costs, budget, parents)
            return 0, plan
        ids = sorted(t.trial_id for t in plan)
        if ids == last:
            # run_sweep ended well, yet a lineage of the batch is not finished in the table.
            log("adaptive seeds: the last batch ended without finishing its lineages; stopping (re-run to resume)")
            return 1, plan
        first, last = last is None, ids
        # --verify scrubs storage once, before the first batch; later batches read what it left
        rc = run_sweep(dataclasses.replace(request, trials=plan, verify=request.verify and first))
        write_state(sweep, settings, cells, costs, budget, parents)
        if rc:
            return rc, plan
