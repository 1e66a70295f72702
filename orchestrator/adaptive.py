"""Adaptive seeds: training seeds only where a cell's claim is still open.

`seeds: {adaptive: {start: 3, step: 2, max: 15, effect: 0.0}}` in an
experiment runs `start` seeds per grid cell; after each batch, every cell
whose claim (the mean paired gain of ticket over dense, selected on held-out
images, differs from `effect`) is not resolved gets `step` seeds more, until
every cell is resolved or at `max`. A claim is resolved when the cell's
anytime-valid confidence sequence (orchestrator/sequential.py), at level
alpha / cells (Bonferroni over the experiment's cells), excludes `effect`,
or, with `margin: m`, lies wholly within effect +- m (no gain worth m): valid
however the sweep stops, so the family's chance of any false claim stays at
most alpha. Without a margin a cell with no gain never resolves (no interval
can show a gain of exactly `effect`) and runs to `max`.

Each batch is one `run` of the driver (orchestrator/driver.py) over the
planned trials, so on a local Ray each batch starts Ray again (~5 s).

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

KEYS = {"start": int, "step": int, "max": int, "effect": float, "margin": float, "alpha": float}
DEFAULTS = {"step": 2, "effect": 0.0, "margin": None, "alpha": sequential.ALPHA}
STATE_FILE = "adaptive.json"


@dataclass(frozen=True)
class Settings:
    start: int
    max: int
    step: int = DEFAULTS["step"]
    effect: float = DEFAULTS["effect"]
    alpha: float = DEFAULTS["alpha"]
    margin: Optional[float] = DEFAULTS["margin"]  # also resolved: the interval within effect +- margin

    def checkpoints(self) -> list[int]:
        return sequential.checkpoints(self.start, self.step, self.max)

    def words(self) -> str:
        claim = f"gain != {self.effect:g}" + (f", or within {self.effect:g} +- {self.margin:g}" if self.margin else "")
        return (f"adaptive seeds: {self.start} per cell, {self.step} more while a cell's claim ({claim}) is open, "
                f"at most {self.max}; anytime-valid at alpha {self.alpha:g}")

    def claim(self, v: "sequential.Verdict") -> Optional[str]:
        """What a verdict settles: the gain above or below `effect`, or within the
        margin around it (the whole interval inside); None while open."""
        if v.resolved:
            return f"gain {'>' if v.direction > 0 else '<'} {self.effect:g}"
        if self.margin and self.effect - self.margin <= v.low and v.high <= self.effect + self.margin:
            return f"gain within {self.effect:g} +- {self.margin:g}"
        return None


def check(value, partial: bool = False) -> Optional[str]:
    """Why `{adaptive: {...}}` is not a valid adaptive seeds form, or None.
    `partial`: a part that `defaults:` completes (no key is required yet)."""
    if set(value) != {"adaptive"} or not isinstance(value["adaptive"], dict):
        return ("must be a list of seeds or {adaptive: {start: N, step: N, max: N, effect: X, alpha: X}}, "
                f"got {value!r}")
    a = value["adaptive"]
    unknown = sorted(set(a) - set(KEYS))
    if unknown:
        return f"unknown key {unknown[0]!r}; allowed: {', '.join(KEYS)}"
    for k in () if partial else ("start", "max"):
        if k not in a:
            return f"{k} is required"
    for k, v in a.items():
        ok = isinstance(v, int) and not isinstance(v, bool) if KEYS[k] is int else \
            isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            return f"{k}: {v!r} is not {'an integer' if KEYS[k] is int else 'a number'}"
    if a.get("start", 2) < 2:
        return f"start: {a['start']} seeds give no interval; it must be at least 2"
    if a.get("step", DEFAULTS["step"]) < 1:
        return f"step: {a['step']} must be at least 1"
    if "max" in a and a["max"] < a.get("start", 2):
        return f"max: {a['max']} is below start ({a.get('start', 2)})"
    if not -1 < a.get("effect", 0.0) < 1:
        return f"effect: {a['effect']} is outside (-1, 1) (a gain in accuracy)"
    if "margin" in a and not 0 < a["margin"] < 1:
        return f"margin: {a['margin']} is outside (0, 1)"
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
                    effect=float(a.get("effect", DEFAULTS["effect"])), alpha=float(a.get("alpha", DEFAULTS["alpha"])),
                    margin=float(a["margin"]) if a.get("margin") is not None else None)


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


def with_flags(exp: dict, flag: Optional[str], budget: Optional[float]) -> dict:
    """`exp` with `--adaptive` in place of its seeds; ValueError (one line) for a
    bad flag, or a `--budget-gpu-h` that is not positive or has no adaptive seeds."""
    if flag is not None:
        exp = {**exp, "seeds": parse_flag(flag)}
        msg = check(exp["seeds"])
        if msg:
            raise ValueError(f"--adaptive: {msg}")
    if budget is not None:
        if not isinstance(exp.get("seeds"), dict):
            raise ValueError("--budget-gpu-h goes with adaptive seeds (seeds: {adaptive: ...} in the yaml, "
                             "or --adaptive)")
        if not budget > 0:
            raise ValueError("--budget-gpu-h must be > 0")
    return exp


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
    claim: Optional[str] = None
    history: list = field(default_factory=list)  # (n, log_e) at every batch judged

    def row(self) -> dict:
        v = self.verdict
        return {"seeds_planned": self.n, "decision": self.status, "resolved": self.status == RESOLVED,
                "resolved_at": self.resolved_at, "claim": self.claim,
                "cs_low": v.low if v else None, "cs_high": v.high if v else None,
                "log_e": v.log_e if v else None}


def decide(cells: dict[str, dict[int, Optional[float]]], settings: Settings, costs: Optional[dict] = None,
           budget: Optional[float] = None, parents: Optional[dict[str, str]] = None) -> tuple[dict[str, Cell], bool]:
    """Replay the batches from the finished lineages' gains.

    `cells`: cell_id -> {seed: gain} of the cell's *finished* lineages (None for
    a finished lineage without a ticket/dense pair). `costs`: cell_id -> device-hours
    of one of its lineages (with `budget`); `parents`: a parent-built cell -> the
    cell its lineages are made from, whose lineages of the same seeds it needs (and
    the budget pays for). Returns (cell_id -> Cell, finished): `finished` when no
    cell waits for lineages and none gets more."""
    m = len(cells)
    threshold = m / settings.alpha
    ladder = settings.checkpoints()
    state = {c: Cell(n=settings.start) for c in cells}

    def spent() -> float:
        n = {c: cell.n for c, cell in state.items()}
        for child, parent in (parents or {}).items():
            if parent in n:
                n[parent] = max(n[parent], state[child].n)
        return sum(k * (costs or {}).get(c, 0.0) for c, k in n.items())
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
            claim = settings.claim(v)
            if claim:
                cell.status, cell.resolved_at, cell.claim = RESOLVED, cell.n, claim
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
            now = state[c].n
            state[c].n = ladder[ladder.index(now) + 1]
            if budget is not None and spent() > budget + 1e-12:
                state[c].n, state[c].status = now, BUDGET
                continue
            state[c].status = WAITING
            granted += 1
        if not granted:
            return state, True


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
                budget: Optional[float], parents: Optional[dict[str, str]] = None) -> None:
    """What query and report need to replay the decisions without the yaml: the
    settings, each cell's lineages by seed, their cost and the cells parent-built
    ones are made from (derived; the rounds decide)."""
    sweep.write_json(STATE_FILE, {"settings": asdict(settings), "cells": cells, "costs": costs,
                                  "budget_gpu_h": budget, "parents": parents or {}})


def read_state(sweep) -> Optional[dict]:
    """The sweep's adaptive settings, None for a sweep with fixed seeds."""
    try:
        got = sweep.read_json(STATE_FILE)
        state = got if isinstance(got, dict) and got.get("settings") else None
        if state is not None:
            Settings(**state["settings"]), dict(state["cells"]), dict(state["costs"])
        return state
    except (ValueError, TypeError, KeyError) as e:  # a torn or hand-edited file: say which, once
        from orchestrator.results import ResultsError
        where = sweep.fs.to_uri(sweep.path(STATE_FILE))
        raise ResultsError(f"{where} is not an adaptive sweep's state ({type(e).__name__}); re-run the sweep's "
                           "`lth-sweep run` command to write it again") from None


def forget_state(sweep) -> None:
    """A fixed-seed `run` of a sweep that was adaptive: its tables show every
    seed again (the adaptive sweep's lineages stay; they are ordinary trials)."""
    from orchestrator.results import ResultsError
    try:
        if read_state(sweep) is None:
            return
    except ResultsError:
        pass  # unreadable: replaced
    sweep.write_json(STATE_FILE, {"settings": None})
