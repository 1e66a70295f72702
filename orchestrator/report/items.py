"""What a report view builds and what it is given: the pieces the report's own
views (views.py) and each evaluation's views (workers/evaluations/, `views`) share.

A view is a (title, builder) pair; the builder runs lazily and returns a `Plot`
or a `Table`, or raises `Skip` (a one-line note in the report, not an error)
when its data is not there (yet).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from orchestrator.formatting import first_line
from orchestrator.paired import DEFAULT_CI
from orchestrator.results import to_pandas
from workers.store import SweepStore


class Skip(Exception):
    """A view whose data this sweep does not have (yet): a note, not an error."""


@dataclass
class Plot:
    filename: str
    png: bytes
    caption: str


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str = ""
    both_protocols: bool = False  # shows val and test selection side by side


ReportItem = Union[Plot, Table]
ReportView = tuple[str, Callable[[], ReportItem]]  # (title, builder)


@dataclass
class ReportInputs:
    """What every view may read: the sweep, its results rows, the selection
    protocol, the gain's interval method (`ci`) and the trial summary
    (derive.trial_summary: one row per trial, its dense round and winning
    ticket side by side)."""
    sweep: SweepStore
    results: pd.DataFrame
    select: str
    trials: pd.DataFrame
    ci: str = DEFAULT_CI

    def table(self, name: str) -> pd.DataFrame:
        """A table an evaluation writes beside the results (see load_optional)."""
        return load_optional(self.sweep, name)


def plot(filename: str, data: pd.DataFrame, empty: str, draw: Callable[[pd.DataFrame], bytes], caption: str) -> Plot:
    """A figure of `data` (drawn by `draw`), or Skip(`empty`) when there is none."""
    if data.empty:
        raise Skip(empty)
    return Plot(filename, draw(data), caption)


def load_optional(sweep: SweepStore, name: str) -> pd.DataFrame:
    """A table other analyses write beside the results (cka/, probe/): empty when
    the folder does not exist; read through the sweep's filesystem (S3 too)."""
    folder = sweep.table_dir(name)
    if not sweep.fs.exists(folder):
        return pd.DataFrame()
    try:
        return to_pandas(pads.dataset(folder, format="parquet", filesystem=sweep.fs.fs).to_table())
    except (pa.ArrowException, OSError) as e:
        raise Skip(f"{name}/ is not readable: {first_line(e)}")


def need_columns(frame: pd.DataFrame, name: str, columns: list[str]) -> None:
    """Skip unless the `name` table exists and has `columns`."""
    if frame.empty:
        raise Skip(f"no {name}/ table in this sweep")
    missing = [c for c in columns if c not in frame]
    if missing:
        raise Skip(f"the {name}/ table lacks the column(s) {', '.join(missing)}")
