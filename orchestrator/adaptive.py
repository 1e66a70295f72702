"""Adaptive seeds: training seeds only where a cell's claim is still open.

`seeds: {adaptive: {start: 3, step: 2, max: 15, effect: 0.0}}` in an
experiment runs `start` seeds per grid cell; after each batch, every cell
whose claim (the mean paired gain of ticket over dense, selected on held-out
images, differs from `effect`) is not resolved gets `step` seeds more, until
every cell is resolved or at `max`. A claim is resolved when the cell's
anytime-valid confidence sequence (orchestrator/sequential.py), at level
alpha / cells (Bonferroni over the experiment's cells), excludes `effect`:
valid however the sweep stops, so the family's chance of any false claim stays
at most alpha.

The decisions are a function of storage alone: `decide` replays the batches
from the gains of finished lineages (seed s of a cell is its s-th lineage,
seeds 0, 1, 2, ...), and a batch is judged only when every lineage of it has
finished, so a killed sweep resumed with the same command reaches the same
batch and makes the same decisions. Added seeds are ordinary trials with
ordinary ids: a fixed `seeds: [0, ..., 9]` sweep of the same cells (same
--storage and --name) reuses them, and the other way round.

A budget (`--budget-gpu-h`, estimated device-hours as `plan` estimates them)
caps the total: a batch's extra seeds go to the open cells closest to
resolving (least evidence missing) while they fit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from orchestrator import sequential

KEYS = {"start": int, "step": int, "max": int, "effect": float, "alpha": float}
DEFAULTS = {"step": 2, "effect": 0.0, "alpha": sequential.ALPHA}
STATE_FILE = "adaptive.json"


@dataclass(frozen=True)
class Settings:
    start: int
    max: int
    step: int = DEFAULTS["step"]
    effect: float = DEFAULTS["effect"]
    alpha: float = DEFAULTS["alpha"]

    def checkpoints(self) -> list[int]:
        return sequential.checkpoints(self.start, self.step, self.max)

    def words(self) -> str:
        return (f"adaptive seeds: {self.start} per cell, {self.step} more while a cell's claim (gain != "
                f"{self.effect:g}) is open, at most {self.max}; anytime-valid at alpha {self.alpha:g}")


def check(value) -> Optional[str]:
    """Why `{adaptive: {...}}` is not a valid adaptive seeds form, or None."""
    if set(value) != {"adaptive"} or not isinstance(value["adaptive"], dict):
        return ("must be a list of seeds or {adaptive: {start: N, step: N, max: N, effect: X, alpha: X}}, "
                f"got {value!r}")
    a = value["adaptive"]
    unknown = sorted(set(a) - set(KEYS))
    if unknown:
        return f"unknown key {unknown[0]!r}; allowed: {', '.join(KEYS)}"
    for k in ("start", "max"):
        if k not in a:
            return f"{k} is required"
    for k, v in a.items():
        ok = isinstance(v, int) and not isinstance(v, bool) if KEYS[k] is int else \
            isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            return f"{k}: {v!r} is not {'an integer' if KEYS[k] is int else 'a number'}"
    if a["start"] < 2:
        return f"start: {a['start']} seeds give no interval; it must be at least 2"
    if a.get("step", DEFAULTS["step"]) < 1:
        return f"step: {a['step']} must be at least 1"
    if a["max"] < a["start"]:
        return f"max: {a['max']} is below start ({a['start']})"
    if not -1 < a.get("effect", 0.0) < 1:
        return f"effect: {a['effect']} is outside (-1, 1) (a gain in accuracy)"
    if not 0 < a.get("alpha", DEFAULTS["alpha"]) < 1:
        return f"alpha: {a['alpha']} is outside (0, 1)"
    return None


def settings_of(exp: dict) -> Optional[Settings]:
    """The experiment's adaptive settings (validated), None for a list of seeds."""
    seeds = exp.get("seeds")
    if not isinstance(seeds, dict):
        return None
    a = seeds["adaptive"]
    return Settings(start=a["start"], max=a["max"], step=a.get("step", DEFAULTS["step"]),
                    effect=float(a.get("effect", DEFAULTS["effect"])), alpha=float(a.get("alpha", DEFAULTS["alpha"])))


def parse_flag(text: str) -> dict:
    """`--adaptive start=3,step=2,max=15,effect=0` -> the yaml form {adaptive: {...}} (checked by check())."""
    out = {}
    for part in filter(None, text.split(",")):
        k, eq, v = part.partition("=")
        k = k.strip()
        if not eq or k not in KEYS:
            raise ValueError(f"--adaptive: {part!r} is not KEY=VALUE with KEY one of {', '.join(KEYS)}")
        try:
            out[k] = KEYS[k](v) if KEYS[k] is float else int(v)
        except ValueError:
            raise ValueError(f"--adaptive: {k}={v} is not {'an integer' if KEYS[k] is int else 'a number'}") from None
    return {"adaptive": out}


# --- decisions ---------------------------------------------------------------------

OPEN, RESOLVED, AT_MAX, BUDGET, NO_CLAIM, WAITING = ("open", "resolved", "open at max", "open: budget spent",
                                                      "no paired seeds", "running")


@dataclass
class Cell:
    """A cell's state: `n` seeds planned, the verdict at the last batch judged
    (None before the first), and why it stopped or waits."""
    n: int
    status: str = WAITING
    verdict: Optional[sequential.Verdict] = None
    resolved_at: Optional[int] = None
    history: list = field(default_factory=list)  # (n, log_e) at every batch judged

    def row(self) -> dict:
        v = self.verdict
        return {"seeds_planned": self.n, "decision": self.status, "resolved": self.status == RESOLVED,
                "resolved_at": self.resolved_at, "cs_low": v.low if v else None, "cs_high": v.high if v else None,
                "log_e": v.log_e if v else None}


def decide(cells: dict[str, dict[int, Optional[float]]], settings: Settings, costs: Optional[dict] = None,
           budget: Optional[float] = None) -> tuple[dict[str, Cell], bool]:
    """Replay the batches from the finished lineages' gains.

    `cells`: cell_id -> {seed: gain} of the cell's *finished* lineages (None for
    a finished lineage without a ticket/dense pair). `costs`: cell_id -> device-hours
    of one of its lineages (with `budget`). Returns (cell_id -> Cell, finished):
    `finished` when no cell waits for lineages and none gets more."""
    m = len(cells)
    threshold = m / settings.alpha
    ladder = settings.checkpoints()
    state = {c: Cell(n=settings.start) for c in cells}
    spent = sum(settings.start * (costs or {}).get(c, 0.0) for c in cells)
    while True:
        wanting = []
        for c, cell in state.items():
            if cell.status in (RESOLVED, AT_MAX, NO_CLAIM, BUDGET):
                continue
            got = cells[c]
            if any(s not in got for s in range(cell.n)):
                cell.status = WAITING
                continue
            gains = [got[s] for s in range(cell.n)]
            if any(g is None for g in gains):
                cell.status = NO_CLAIM
                continue
            v = sequential.confidence_sequence(gains, settings.effect, settings.alpha, m)
            if not cell.history or cell.history[-1][0] != cell.n:
                cell.history.append((cell.n, v.log_e))
            cell.verdict = v
            if v.resolved:
                cell.status, cell.resolved_at = RESOLVED, cell.n
            elif cell.n >= settings.max:
                cell.status = AT_MAX
            else:
                cell.status = OPEN
                wanting.append(c)
        if any(cell.status == WAITING for cell in state.values()):
            return state, False  # a batch is judged whole: resumes replay the same batches
        if not wanting:
            return state, True
        # Closest to resolving first: the least log-evidence still missing; ties by cell id.
        wanting.sort(key=lambda c: (math.log(threshold) - state[c].verdict.log_e, c))
        granted = 0
        for c in wanting:
            nxt = ladder[ladder.index(state[c].n) + 1]
            extra = (nxt - state[c].n) * (costs or {}).get(c, 0.0)
            if budget is not None and spent + extra > budget + 1e-12:
                state[c].status = BUDGET
                continue
            spent += extra
            state[c].n, state[c].status = nxt, WAITING
            granted += 1
        if not granted:
            return state, True


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


# --- from storage ------------------------------------------------------------------

def gains_by_trial(frame) -> dict[str, Optional[float]]:
    """trial_id -> paired gain of every finished lineage in a results frame
    (selected on held-out images, the decision's protocol); None for a finished
    lineage without a dense/ticket pair."""
    from orchestrator.paired import paired
    from workers import selection
    p = paired(frame, selection.DEFAULT_SELECTION)
    return {r.trial_id: (float(r.gain) if r.paired else None) for r in p.itertuples(index=False) if r.complete}


def by_cell(trials: list) -> dict[str, list[str]]:
    """cell -> its trial ids by seed (seed s at index s): the spec's cell (the
    results' cell_id also names the numerics a lineage ran in, known only after)."""
    out: dict[str, dict[int, str]] = {}
    for t in trials:
        out.setdefault(t.spec.cell_id, {})[t.spec.seed] = t.trial_id
    return {c: [seeds[s] for s in sorted(seeds)] for c, seeds in out.items()}


def cell_gains(cells: dict[str, list[str]], gains: dict[str, Optional[float]]) -> dict[str, dict[int, Optional[float]]]:
    return {c: {s: gains[tid] for s, tid in enumerate(tids) if tid in gains} for c, tids in cells.items()}


def write_state(sweep, settings: Settings, cells: dict[str, list[str]], costs: dict[str, float],
                budget: Optional[float]) -> None:
    """What query and report need to replay the decisions without the yaml: the
    settings, each cell's lineages by seed and their cost (derived; the rounds decide)."""
    sweep.write_json(STATE_FILE, {"settings": asdict(settings), "cells": cells, "costs": costs,
                                  "budget_gpu_h": budget})


def read_state(sweep) -> Optional[dict]:
    """The sweep's adaptive settings, None for a sweep with fixed seeds."""
    got = sweep.read_json(STATE_FILE)
    return got if isinstance(got, dict) and "settings" in got else None


# --- cost, running ---------------------------------------------------------------------

def cell_costs(trials: list) -> dict[str, float]:
    """cell_id -> estimated device-hours of one of its lineages (orchestrator/costs.py, as `plan`)."""
    from orchestrator.costs import estimate
    first: dict = {}
    for t in trials:
        first.setdefault(t.spec.cell_id, t)
    return {c: estimate([t])["device_s"] / 3600 for c, t in first.items()}


def planned(trials: list, state: dict[str, Cell]) -> list:
    """The trials of the decided plan: seeds 0 .. n - 1 of every cell."""
    return [t for t in trials if t.spec.seed < state[t.spec.cell_id].n]


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
        then = {RESOLVED: f"resolved at {v.n} seeds", AT_MAX: f"open at max ({cell.n} seeds)",
                BUDGET: "open: the budget is spent", WAITING: f"open: {cell.n - v.n} seeds more ({cell.n})"}
        out.append(f"  {names.get(c, c)}: {why}; {then.get(cell.status, cell.status)}")
    return out


def counts_line(state: dict[str, Cell]) -> str:
    by: dict[str, int] = {}
    for cell in state.values():
        by[cell.status] = by.get(cell.status, 0) + 1
    lineages = sum(cell.n for cell in state.values())
    return f"{lineages} lineages planned over {len(state)} cells; " + ", ".join(f"{v} {k}" for k, v in sorted(by.items()))


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


def plan_from_storage(sweep, trials: list, settings: Settings, budget: Optional[float]):
    """(the trials the decisions so far plan, cell -> Cell, finished), replayed from storage."""
    cells, costs = by_cell(trials), cell_costs(trials)
    state, finished = decide(cell_gains(cells, stored_gains(sweep)), settings, costs, budget)
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
    cells, costs, names = by_cell(trials), cell_costs(trials), cell_names(trials)
    last, before = None, {}
    while True:
        state, finished = decide(cell_gains(cells, stored_gains(sweep)), settings, costs, budget)
        plan = planned(trials, state)
        log(f"{settings.words()}: {counts_line(state)}")
        for line in changes(state, before, names, settings.effect):
            print(line, flush=True)
        before = {c: (cell.n, cell.status) for c, cell in state.items()}
        if finished:
            write_state(sweep, settings, cells, costs, budget)
            return 0, plan
        ids = sorted(t.trial_id for t in plan)
        if ids == last:
            # run_sweep ended well, yet a lineage of the batch is not finished in the table.
            log("adaptive seeds: the last batch ended without finishing its lineages; stopping (re-run to resume)")
            return 1, plan
        last = ids
        rc = run_sweep(dataclasses.replace(request, trials=plan))
        write_state(sweep, settings, cells, costs, budget)
        if rc:
            return rc, plan


# --- tables ----------------------------------------------------------------------------

SEQUENCE_COLUMNS = ["seeds_planned", "decision", "resolved", "resolved_at", "cs_low", "cs_high"]


def _replay(frame, state: dict) -> dict[str, Cell]:
    settings = Settings(**state["settings"])
    gains = cell_gains(state["cells"], gains_by_trial(frame))
    return decide(gains, settings, state["costs"], state.get("budget_gpu_h"))[0]


def planned_rows(frame, state: dict):
    """The results rows of the lineages the adaptive decisions planned (a fixed
    sweep in the same folder may hold more seeds of the same cells)."""
    import pandas as pd

    from orchestrator.results import sql_over_frames
    cells = _replay(frame, state)
    ids = pd.DataFrame({"planned": [tid for c, cell in cells.items() for tid in state["cells"][c][:cell.n]]})
    return sql_over_frames("SELECT r.* FROM rows r WHERE r.trial_id IN (SELECT planned FROM ids)",
                           rows=frame, ids=ids)


def with_sequences(table, frame, sweep) -> tuple:
    """A compare() table of an adaptive sweep with, per cell, its decision and
    its anytime-valid confidence sequence beside the fixed-n interval; and the
    note that names them."""
    import pandas as pd

    from orchestrator.paired import paired
    state = read_state(sweep)
    if state is None or table.empty:
        return table, []
    settings = Settings(**state["settings"])
    cells = _replay(frame, state)
    # a row of the table is a results cell (the spec's cell and the numerics it ran in)
    spec_cell = {tid: c for c, tids in state["cells"].items() for tid in tids}
    p = paired(frame)
    of_row = {r.cell_id: spec_cell[r.trial_id] for r in p.itertuples(index=False) if r.trial_id in spec_cell}
    extra = pd.DataFrame([{"cell_id": row, **{k: v for k, v in cells[c].row().items() if k in SEQUENCE_COLUMNS}}
                          for row, c in of_row.items()], columns=["cell_id", *SEQUENCE_COLUMNS])
    extra["resolved_at"] = pd.array(extra["resolved_at"], dtype="Int64")
    for col in ("cs_low", "cs_high"):
        extra[col] = pd.array(extra[col], dtype="Float64")
    keep = [c for c in table.columns if c != "cell_id"]
    out = table.merge(extra, on="cell_id", how="left")[keep + SEQUENCE_COLUMNS + ["cell_id"]]
    m = len(state["costs"])
    note = (f"{settings.words()}. cs_low/cs_high: the anytime-valid confidence sequence of the cell's mean "
            f"per-seed gain (held-out selection; sequential t mixture, orchestrator/sequential.py) at level "
            f"1 - {settings.alpha:g}/{m} per cell, Bonferroni over the {m} cells: valid at whatever seed count "
            f"the cell stopped at. resolved: it excludes {settings.effect:g} (resolved_at: at that many seeds). "
            "gain_ci_low/gain_ci_high and p_holm are fixed-n numbers: read after adaptive stopping they "
            "overstate the evidence. The test split is fixed: a claim is about the mean gain on it.")
    return out, [note]


def plan_lines(settings: Settings, spread: dict) -> str:
    """`plan`'s words on an adaptive experiment: what it can cost at least and at most."""
    def hours(h):
        if h >= 0.1:
            return f"~{h:.3g} device-hours"
        m = round(h * 60)
        return f"~{m} device-minute{'s' if m > 1 else ''}" if m >= 1 else "under a device-minute"
    m, first = spread["cells"], spread["earliest"]
    per_lineage = spread["device_hours_min"] / max(1, spread["lineages_min"])
    lines = [f"\n{settings.words()}.",
             f"{m} cells: at least {spread['lineages_min']} lineages ({hours(spread['device_hours_min'])}: every "
             f"claim resolved at the first batch that can resolve one), at most {spread['lineages_max']} "
             f"({hours(spread['lineages_max'] * per_lineage)}: every cell to {settings.max} seeds)"]
    if spread["budget_gpu_h"] is not None:
        lines.append(f"--budget-gpu-h {spread['budget_gpu_h']:g} caps it at {hours(spread['device_hours_max'])}")
    lines.append(f"a claim can resolve from {first} seeds on (alpha {settings.alpha:g} over {m} cells)"
                 + (f": none can by max {settings.max}; raise max" if first > settings.max else ""))
    return "\n".join(lines)
