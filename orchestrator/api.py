"""The Python API, for notebooks: the same rules as the CLI (one implementation).

    from orchestrator.api import load_results, winning_tickets, compare, report

    df = load_results("runs", "digits_study")          # one row per (trial, round)
    winning_tickets(df)                                 # one row per trial (select="val" by default)
    compare(df, select="val")                           # one row per grid cell: paired gain and its 95% interval
    compare(df, select="test")                          # the paper's protocol, on the same lineages
    protocols(df)                                       # both side by side, with the selection bias
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


def compare(df: pd.DataFrame, select: str = DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per grid cell: dense vs winning ticket, paired gain with its 95% interval."""
    return _tables.compare(df, select)


def protocols(df: pd.DataFrame) -> pd.DataFrame:
    """The gain under both selections per cell, with the selection bias."""
    return _tables.protocols(df)


def protocol(df: pd.DataFrame, select: str = DEFAULT_SELECTION) -> str:
    """The sentence to put under a table made from `df`: selection, budget, BatchNorm."""
    return _tables.protocol_line(select, df)


def report(storage: str, sweep: str, out_dir: str, select: str = DEFAULT_SELECTION) -> list[str]:
    """Write the report (report.md, report.html, the figures) into out_dir; returns the paths."""
    from orchestrator.report import write_report
    return write_report(_sweep(storage, sweep), out_dir, select=select)


def dataset(storage: str, sweep: str):
    """The results as a lazy pyarrow dataset (for tables too large for pandas)."""
    return _results_dataset(_sweep(storage, sweep))


__all__ = ["compare", "dataset", "load_layers", "load_results", "protocol", "protocols", "report",
           "winning_tickets"]
