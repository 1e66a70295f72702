"""The Parquet results table: derived from committed round manifests, queried with SQL.

Committed manifests are the only truth; everything here can be thrown away
and rebuilt. By concern:

    schema.py   columns, Arrow schemas, schema version (from the spec and the evaluation registry)
    rows.py     manifests -> rows (older sweeps read through workers/migrate.py)
    shards.py   Parquet shards under the sweep: load_table / load_results / load_layers (reading)
    collector.py the Collector: appends, compaction and the check against the pointers (writing)
    rowfiles.py the rows appended per committed round (<table>/_rows/), until compaction
    sql.py      SQL over frames and over a sweep's tables (run_sql)

The names below are the package's public ones (the driver, the CLI, the API,
tables, status, report and bench import them from here).
"""
from orchestrator.formatting import format_frame

from .rows import rows_for_trial
from .schema import (LAYERS_SCHEMA, RESULTS_SCHEMA, ROUND_COLUMNS, SCHEMA_VERSION, SCHEMAS, NewerSchemaError,
                     ResultsError)
from .collector import Collector
from .shards import load_layers, load_results, load_table, results_dataset, shard_of, to_pandas
from .sql import Frame, run_sql, sql_over_frames

__all__ = ["Collector", "Frame", "LAYERS_SCHEMA", "NewerSchemaError", "RESULTS_SCHEMA", "ROUND_COLUMNS",
           "ResultsError", "SCHEMAS", "SCHEMA_VERSION", "format_frame", "load_layers", "load_results", "load_table",
           "results_dataset", "rows_for_trial", "run_sql", "shard_of", "sql_over_frames", "to_pandas"]
