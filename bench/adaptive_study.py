"""Adaptive seeds against a fixed seed count, on the same lineages (README, docs/statistics.md).

    python -m bench.adaptive_study            # run both sweeps (resumes), then compare
    python -m bench.adaptive_study --no-run   # only the comparison, from finished sweeps

`digits_adaptive` of ./experiments.yaml is digits_study's 8 cells with
`seeds: {adaptive: {start: 3, step: 2, max: 10}}`. The study first runs the
fixed sweep, every cell at 10 seeds (seeds 0-9), then the adaptive sweep in
the same folder: its lineages are the fixed sweep's first seeds (same ids), so
both read the very same trained networks, and the adaptive sweep's cost is the
lineages its decisions plan. Per cell it prints both conclusions side by side:
the fixed sweep's (the default 95% interval, Holm over the 8 cells) and the
adaptive one's (the anytime-valid confidence sequence, Bonferroni over the 8
cells), and in total the lineages each trains and their training time.

It also prints the simulation the adaptive decisions rest on
(tests/orchestrator/test_sequential.py asserts it): 2,000 cells without a
true gain, judged after 3, 5, ..., 15 seeds and stopped at the first batch
that resolves them, under the confidence sequence and under the ordinary t
interval.

What it prints is also written to bench/results/adaptive_study.md (--out),
which the README quotes (tests/test_readme_claims.py reads the numbers back).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd

from bench.common import write_output
from orchestrator import adaptive, adaptive_run, adaptive_views, sequential

OUTPUT = os.path.join("bench", "results", "adaptive_study.md")
EXPERIMENT, SWEEP = "digits_adaptive", "digits_seeds"

# --- the null simulation -------------------------------------------------------------

SIM_CELLS, SIM_START, SIM_STEP, SIM_MAX = 2000, 3, 2, 15


def null_gaussian(rng, cells: int = SIM_CELLS, most: int = SIM_MAX):
    """Per-seed gains of cells without an effect, each cell its own seed-to-seed sd."""
    sd = rng.uniform(0.005, 0.05, size=(cells, 1))
    return rng.normal(0.0, 1.0, size=(cells, most)) * sd


def null_accuracies(rng, cells: int = SIM_CELLS, most: int = SIM_MAX, images: int = 1000):
    """Closer to a real cell: each seed's dense network and ticket share the
    seed's draw (its training subset) and come from one distribution (no gain),
    each measured on `images` test images: the gain is a difference of two
    binomial accuracies, discrete and bounded."""
    level = rng.uniform(0.3, 0.95, size=(cells, 1))
    spread = rng.uniform(0.005, 0.04, size=(cells, 1))
    acc = np.clip(level + rng.normal(0, 1, size=(cells, most)) * spread, 0.01, 0.99)

    def measured():
        return rng.binomial(images, np.clip(acc + rng.normal(0, 1, acc.shape) * spread / 2, 0.01, 0.99)) / images
    return measured() - measured()


def share_resolved(gains, rule) -> float:
    """The share of cells some batch resolves, stopping at the first that does."""
    return float(np.mean([sequential.first_resolved(row, SIM_START, SIM_STEP, SIM_MAX, rule) is not None
                          for row in gains]))


def anytime(g) -> bool:
    return sequential.confidence_sequence(g, 0.0, sequential.ALPHA).resolved


def fixed_n_t(g) -> bool:
    return sequential.t_excludes(g, 0.0, sequential.ALPHA)


def simulation() -> list[str]:
    out = []
    for name, null in (("normal gains", null_gaussian), ("binomial accuracies", null_accuracies)):
        g = null(np.random.default_rng(20261207))
        out.append(f"| {name} | {share_resolved(g, anytime):.1%} | {share_resolved(g, fixed_n_t):.1%} |")
    return [f"{SIM_CELLS:,} simulated cells without a gain, judged after {SIM_START}, {SIM_START + SIM_STEP}, ..., "
            f"{SIM_MAX} seeds, stopped at the first batch that resolves them (alpha {sequential.ALPHA:g}):",
            "", "| null | wrongly resolved, confidence sequence | wrongly resolved, t interval at first exclusion |",
            "|---|---|---|", *out]


# --- the digits comparison ---------------------------------------------------------------

def _run(storage: str) -> int:
    from orchestrator.config import load_config
    from orchestrator.driver import run_sweep
    from orchestrator.grid import expand
    from orchestrator.request import SweepRequest
    exp = load_config("experiments.yaml")["experiments"][EXPERIMENT]
    trials = expand(exp)  # every seed up to max: the fixed sweep
    request = SweepRequest(trials=trials, experiment=EXPERIMENT, sweep_name=SWEEP, storage=storage, plain=True)
    rc = run_sweep(request)
    if rc:
        return rc
    return adaptive_run.run(request, adaptive.settings_of(exp), None)[0]


def _signed(x) -> str:
    return "–" if pd.isna(x) else f"{x:+.3f}"


def _interval(lo, hi) -> str:
    return "–" if pd.isna(lo) else f"[{_signed(lo)}, {_signed(hi)}]"


def comparison(storage: str) -> list[str]:
    from orchestrator.api import compare, load_results
    from workers.store import SweepStore
    sweep = SweepStore(storage, SWEEP)
    rows = load_results(storage, SWEEP)
    state = adaptive.read_state(sweep)
    settings = adaptive.Settings(**state["settings"])
    fixed = compare(rows)
    mine = adaptive_views.planned_rows(rows, state)
    adapt, _ = adaptive_views.with_sequences(compare(mine), mine, sweep)
    key = ["images_per_class", "augmentation"]
    both = fixed.merge(adapt, on=key, suffixes=("", "_a"))
    both = both.sort_values(key, ascending=[True, False])
    lines = ["| images/class | augmentation | fixed: seeds | gain | 95% interval | p (Holm) | claim | "
             "adaptive: seeds | gain | anytime-valid interval | decision |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in both.itertuples(index=False):
        claim = "yes" if r.p_holm < sequential.ALPHA else "no"
        lines.append(f"| {int(r.images_per_class)} | {r.augmentation} | {int(r.n_seeds)} | {_signed(r.gain)} | "
                     f"{_interval(r.gain_ci_low, r.gain_ci_high)} | {r.p_holm:.3f} | {claim} | {int(r.n_seeds_a)} | "
                     f"{_signed(r.gain_a)} | {_interval(r.cs_low, r.cs_high)} | "
                     f"{f'{r.decision} at {int(r.resolved_at)}: {r.claim}' if r.resolved else r.decision} |")
    wall = rows.groupby("trial_id")["wall_s"].sum()
    planned = set(mine["trial_id"])
    n_fixed, n_adapt = len(wall), len(planned)
    t_fixed, t_adapt = wall.sum(), wall[wall.index.isin(planned)].sum()

    def named(t, claim=False):
        return ", ".join(f"{int(r.images_per_class)}/class {r.augmentation}" + (f" ({r.claim})" if claim else "")
                         for r in t.itertuples()) or "none"
    fixed_claims = both[both["p_holm"] < sequential.ALPHA].sort_values(key, ascending=[True, False])
    adapt_claims = both[both["resolved"] == True].sort_values(key, ascending=[True, False])  # noqa: E712
    return [*lines, "",
            f"lineages trained: fixed {n_fixed}, adaptive {n_adapt} ({1 - n_adapt / n_fixed:.0%} fewer); "
            f"training time summed over lineages: fixed {t_fixed:.0f} s, adaptive {t_adapt:.0f} s "
            f"({1 - t_adapt / t_fixed:.0%} less), on {os.cpu_count()} CPU cores",
            f"claims, fixed {settings.max} seeds (Holm over {len(both)} cells at {sequential.ALPHA:g}): "
            f"{named(fixed_claims)}",
            f"claims, adaptive (anytime-valid, Bonferroni over {len(both)} cells at {settings.alpha:g}): "
            f"{named(adapt_claims, claim=True)}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.adaptive_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="runs")
    ap.add_argument("--no-run", action="store_true", help="only the comparison, from finished sweeps")
    ap.add_argument("--out", default=OUTPUT, help=f"also write the output here (default {OUTPUT})")
    a = ap.parse_args(argv)
    if not a.no_run and (rc := _run(a.storage)):
        return rc
    write_output(a.out, [*comparison(a.storage), "", *simulation()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
