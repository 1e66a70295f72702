"""SQL over the tables (duckdb dialect): `query --sql` and the rules in orchestrator/tables.py."""
from __future__ import annotations

from typing import Union

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from orchestrator.formatting import first_line
from workers.store import SweepStore

from .schema import ResultsError
from .shards import results_dataset, to_pandas

Frame = Union[pd.DataFrame, pa.Table, pads.Dataset]


def sql_over_frames(sql: str, **tables: Frame) -> pd.DataFrame:
    """Run `sql` with each keyword's frame as a view of that name; a bad query is one-line ResultsError."""
    import duckdb  # imported lazily: only queries need it

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")  # timestamps come back as UTC, not local time
        for name, table in tables.items():
            if isinstance(table, pd.DataFrame):
                table = pa.Table.from_pandas(table, preserve_index=False)
            con.register(name, table)
        return to_pandas(con.sql(sql).to_arrow_table())
    except (duckdb.Error, pa.ArrowException) as e:
        raise ResultsError(first_line(e)) from None
    finally:
        con.close()


def run_sql(sweep_store: SweepStore, sql: str) -> pd.DataFrame:
    """Any SQL over the views `results` and `layers` (duckdb dialect)."""
    return sql_over_frames(sql, results=results_dataset(sweep_store, "results"),
                           layers=results_dataset(sweep_store, "layers"))
