"""The Python API, for notebooks: the same rules as the CLI (one implementation).

    from orchestrator.api import load_results, winning_tickets, compare, report

    df = load_results("runs", "digits_study")          # one row per (trial, round)
    winning_tickets(df)                                 # one row per trial (select="val" by default)
    compare(df, select="val")                           # one row per grid cell: paired gain, 95% interval, p, p_holm
    compare(df, ci="t")                                 # the seed-level t interval instead of the bootstrap
    power(df, effect=0.02)                              # per cell: smallest detectable gain, seeds 0.02 needs
    power(df, effect=0.02, ci="t")                      # the same from the seed-level paired t-test
    compare(df, select="test")                          # the paper's protocol, on the same lineages
    adaptive("runs", "digits_adaptive")                 # an adaptive sweep: decisions, anytime-valid intervals
    protocols(df)                                       # both side by side, with the selection bias
    predictions("runs", "digits_study", trial_id, 3)    # one row per held-out and test image of round 3
    report("runs", "digits_study", "report-digits")     # the figures and tables, as `lth-sweep report`

`storage` is a local path or s3://bucket/prefix, as for `--storage`.
"""
from __future__ import annotations

import pandas as pd

from orchestrator import tables as _tables
from orchestrator.results import load_results as _load_results
from orchestrator.results import results_dataset as _results_dataset
from workers.selection import DEFAULT_SELECTION
from workers.store import SweepStore


def _sweep(storage: str, sweep: str) -> SweepStore:
    st = SweepStore(storage, sweep)
    if not st.exists():
        from orchestrator.results import ResultsError
        raise ResultsError(f"no sweep {sweep!r} under {storage}")
    return st


def load_results(storage: str, sweep: str) -> pd.DataFrame:
    """The sweep's results table (also for sweeps written by older versions)."""
    return _load_results(_sweep(storage, sweep))


def load_layers(storage: str, sweep: str) -> pd.DataFrame:
    """Per-layer densities: trial_id, round, layer, density, numel."""
    from orchestrator.results import load_layers as _layers
    return _layers(_sweep(storage, sweep))


def winning_tickets(df: pd.DataFrame, select: str = DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per trial: its winning ticket under `select` ("val" or "test")."""
    return _tables.winning_tickets(df, select)


def compare(df: pd.DataFrame, select: str = DEFAULT_SELECTION, ci: str = _tables.DEFAULT_CI) -> pd.DataFrame:
    """One row per grid cell: dense vs winning ticket, paired gain with its 95%
    interval (ci="bootstrap": seeds and test images; "t": seeds only), p_value,
    p_holm (Holm over the rows) and prob_ticket_better."""
    return _tables.compare(df, select, ci)


def adaptive(storage: str, sweep: str, select: str = DEFAULT_SELECTION,
             ci: str = _tables.DEFAULT_CI) -> pd.DataFrame:
    """An adaptive sweep's compare table, as `query --compare` prints it: the
    seeds its decisions planned, and per cell seeds_planned, decision, resolved,
    resolved_at, claim and the anytime-valid interval (cs_low, cs_high) beside
    the fixed-n one. The note naming them is the table's `attrs["note"]`."""
    from orchestrator import adaptive as _adaptive
    from orchestrator.adaptive_views import planned_rows, with_sequences
    from orchestrator.results import ResultsError
    st = _sweep(storage, sweep)
    state = _adaptive.read_state(st)
    if state is None:
        raise ResultsError(f"sweep {sweep!r} has fixed seeds (no adaptive decisions): use compare()")
    rows = planned_rows(_results_dataset(st), state)
    table, notes = with_sequences(_tables.compare(rows, select, ci), rows, st)
    table.attrs["note"] = " ".join(notes)
    return table


def power(df: pd.DataFrame, select: str = DEFAULT_SELECTION, effect: float = 0.02,
          ci: str = _tables.DEFAULT_CI) -> pd.DataFrame:
    """Per grid cell: the smallest gain its seeds detect at 80% power, and the seeds
    a gain of `effect` needs, for the default interval's test (seeds and the shared
    test images; `reachable` False where the test split's images alone forbid it);
    ci="t": the seed-level paired t-test's answer."""
    return _tables.power(df, select, effect, ci)


def protocols(df: pd.DataFrame, ci: str = _tables.DEFAULT_CI) -> pd.DataFrame:
    """The gain under both selections per cell, with the selection bias."""
    return _tables.protocols(df, ci)


def protocol(df: pd.DataFrame, select: str = DEFAULT_SELECTION, ci: str = _tables.DEFAULT_CI) -> str:
    """The sentence to put under a table made from `df`: selection, budget, BatchNorm, interval."""
    return _tables.protocol_line(select, df, ci)


def report(storage: str, sweep: str, out_dir: str, select: str = DEFAULT_SELECTION,
           ci: str = _tables.DEFAULT_CI) -> list[str]:
    """Write the report (report.md, report.html, the figures) into out_dir; returns the paths."""
    from orchestrator.report import write_report
    return write_report(_sweep(storage, sweep), out_dir, select=select, ci=ci)


def predictions(storage: str, sweep: str, trial_id: str, round: int) -> pd.DataFrame:
    """Every held-out (val) and test image of one committed round: split, image
    (its index in the split's stored order), label, predicted, correct."""
    import numpy as np
    from orchestrator.results import ResultsError
    from workers.store import CorruptRound
    lin = _sweep(storage, sweep).lineage(trial_id)
    if lin.read_manifest(round) is None:
        have = sorted(lin.manifests())
        if not have:
            raise ResultsError(f"no trial {trial_id!r} with committed rounds in sweep {sweep!r}")
        raise ResultsError(f"trial {trial_id} has no committed round {round} (committed: "
                           f"{', '.join(map(str, have))})")
    try:
        arrays = lin.read_predictions(round)
    except CorruptRound as e:
        raise ResultsError(f"{e} (`lth-sweep verify` names every damaged file)") from None
    if arrays is None:
        from workers.migrate import NO_PREDICTIONS
        raise ResultsError(f"round {round} of trial {trial_id} has no per-image predictions: it was "
                           f"{NO_PREDICTIONS} (its accuracies stand; a new sweep records them)")
    parts = []
    for split in ("val", "test"):
        label, pred = arrays[f"{split}_label"].astype(np.int64), arrays[f"{split}_pred"].astype(np.int64)
        parts.append(pd.DataFrame({"split": split, "image": np.arange(len(label), dtype=np.int64),
                                   "label": label, "predicted": pred, "correct": label == pred}))
    return pd.concat(parts, ignore_index=True)


def dataset(storage: str, sweep: str):
    """The results as a lazy pyarrow dataset (for tables too large for pandas)."""
    return _results_dataset(_sweep(storage, sweep))


__all__ = ["compare", "dataset", "load_layers", "load_results", "power", "predictions", "protocol", "protocols",
           "report", "winning_tickets"]
