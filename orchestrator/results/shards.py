"""Shard storage: the tables as Parquet files under the sweep, kept equal to the manifests.

Rows are sharded by the first two characters of the trial id:

    <sweep>/results/part-<xx>.parquet     one row per (trial_id, round)
    <sweep>/layers/part-<xx>.parquet      one row per (trial_id, round, layer)
    <sweep>/<evaluation table>/part-<xx>.parquet

Every trial's rows live in exactly one shard, and a shard is always rewritten
whole and atomically (FS.write), so updating a trial replaces its rows rather
than appending to them: a row can never be duplicated, and a kill mid-write
leaves the old shard or the new one. The folders hold nothing but shards, so
`pandas.read_parquet(dir)` and `pyarrow.dataset.dataset(dir)` read them as is.

During a run the driver does not rewrite shards: each committed round is
appended as a row file of its own under `<table>/_rows/` (rowfiles.py; a
constant cost per round at any sweep size), which load_table lays over the
shards; compaction (collector.py: compact, sync, rebuild) folds them in.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from orchestrator.formatting import first_line
from workers.migrate import shards_outdated
from workers.store import SweepStore

from . import rowfiles
from .rows import rows_for_trial
from .schema import (META_TABLE, META_VERSION, SCHEMA_VERSION, SCHEMAS, NewerSchemaError,
                     ResultsError)



def shard_of(trial_id: str) -> str:
    return f"part-{trial_id[:2]}.parquet"


def _is_hidden(name: str) -> bool:
    """Names that are not shards to read: pyarrow's dataset discovery (and so
    pandas.read_parquet) skips '.'/'_' names; '.tmp-' ones are a killed write's."""
    return name.startswith((".", "_")) or ".tmp-" in name


def _is_shard(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet") and ".tmp-" not in name


def _short(sweep_store: SweepStore, path: str) -> str:
    return path[len(sweep_store.dir) + 1:] if path.startswith(sweep_store.dir + "/") else path


def _check_file(sweep_store: SweepStore, path: str, kind: str, data: Optional[bytes] = None) -> int:
    """Refuse a file that is torn, not ours, or newer than this code; returns its
    schema version. Only the footer is read (of `data`, the file's bytes, if
    given), so checking every shard before a query costs little."""
    short = _short(sweep_store, path)
    try:
        schema = (pq.read_schema(pa.BufferReader(data)) if data is not None
                  else pq.read_schema(path, filesystem=sweep_store.fs.fs))
    except Exception as e:  # pyarrow raises several types for a torn or foreign file
        raise ResultsError(f"{short}: not a readable Parquet file ({first_line(e)}); "
                           "delete it, or rebuild the table") from None
    meta = schema.metadata or {}
    if meta.get(META_TABLE) != kind.encode():
        raise ResultsError(f"{short}: not an lth-sweep {kind} file; "
                           f"the {kind}/ folder must hold only lth-sweep's shards")
    try:
        version = int(meta.get(META_VERSION, b"0"))
    except ValueError:
        version = 0
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(f"{short}: written with results schema version {version}, this "
                               f"lth-sweep reads up to {SCHEMA_VERSION}; upgrade lth-sweep")
    return version


FETCH_THREADS = 32  # an object store answers each read in tens of ms: never one at a time


def _checked_dataset(sweep_store: SweepStore, paths: list[str],
                     kind: str) -> tuple[Union[pads.Dataset, pa.Table], int]:
    """The given shards with our schema, and the oldest version among them. The
    explicit schema also reads older-version shards: missing columns come back
    as nulls. Local (and NFS) shards: one lazy dataset, so duckdb reads only the
    columns and row groups a query needs. On an object store, every query over
    a lazy dataset would fetch every shard again, one after another (about 7 s
    per query behind 20 ms at 183 shards): there the shards are fetched once,
    concurrently, each checked from its own bytes, into one in-memory table."""
    if sweep_store.fs.local:
        versions = [_check_file(sweep_store, path, kind) for path in paths]
        return (pads.dataset(paths, schema=SCHEMAS[kind], format="parquet", filesystem=sweep_store.fs.fs),
                min(versions, default=SCHEMA_VERSION))

    def fetch(path: str) -> tuple[pa.Table, int]:
        data = sweep_store.fs.read(path)
        version = _check_file(sweep_store, path, kind, data)
        try:
            return pq.read_table(pa.BufferReader(data), schema=SCHEMAS[kind]), version
        except (pa.ArrowException, OSError) as e:  # a shard whose footer is fine but data is not
            raise ResultsError(f"{_short(sweep_store, path)}: cannot read it ({first_line(e)})") from None
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max(1, min(FETCH_THREADS, len(paths)))) as pool:
        got = list(pool.map(fetch, paths))
    table = pa.concat_tables([t for t, _ in got]) if got else SCHEMAS[kind].empty_table()
    return table, min((v for _, v in got), default=SCHEMA_VERSION)


def results_dataset(sweep_store: SweepStore, kind: str = "results") -> Union[pads.Dataset, pa.Table]:
    """Every shard of `results` or `layers`, checked, as a lazy pyarrow dataset
    (duckdb then reads only the columns and row groups a query needs), or on an
    object store as one table fetched once (_checked_dataset).

    Shards written by an older lth-sweep lack what this one derives from the
    manifests (the grid cell, the validation budget, which val_acc were really
    held out): then the table is derived again from the manifests, in memory
    (the next `run` rewrites the shards), so an old sweep reads like a new one."""
    folder = sweep_store.table_dir(kind)
    names = sweep_store.fs.listdir(folder)
    ds, version = _checked_dataset(sweep_store, [f"{folder}/{n}" for n in names if not _is_hidden(n)], kind)
    if shards_outdated(version, SCHEMA_VERSION) and kind in ("results", "layers"):
        return tables_for(sweep_store, sweep_store.trial_ids())[kind]
    if rowfiles.ROWS in names:
        # Rounds appended since the last compaction (a run going on, or killed): they
        # replace the shards' rows of their keys, so each key is read exactly once.
        pending = rowfiles.listing(sweep_store, kind)
        if rowfiles.pending(pending):
            return rowfiles.overlay(sweep_store, kind, _to_table(ds), pending)
    return ds


def _to_table(dataset: Union[pads.Dataset, pa.Table], columns: Optional[list[str]] = None) -> pa.Table:
    if isinstance(dataset, pa.Table):
        return dataset.select(columns) if columns else dataset
    try:
        return dataset.to_table(columns=columns)
    except (pa.ArrowException, OSError) as e:  # a shard whose footer is fine but data is not
        raise ResultsError(f"cannot read the results table: {first_line(e)}") from None


def load_table(sweep_store: SweepStore, kind: str = "results",
               columns: Optional[list[str]] = None) -> pa.Table:
    """All shards of one table (`results`, `layers` or an evaluation's) as one pyarrow table (empty if none)."""
    return _to_table(results_dataset(sweep_store, kind), columns)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Integers stay integers where some are null (images_per_class): pandas'
    nullable Int64 instead of float64, so 10 is never printed as 10.0."""
    ints = {t: pd.api.types.pandas_dtype(str(t).replace("int", "Int"))
            for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())}
    return table.to_pandas(types_mapper=ints.get)


def load_results(sweep_store: SweepStore) -> pd.DataFrame:
    return to_pandas(load_table(sweep_store, "results"))


def load_layers(sweep_store: SweepStore) -> pd.DataFrame:
    return to_pandas(load_table(sweep_store, "layers"))


def tables_for(sweep_store: SweepStore, trial_ids: Iterable[str]) -> dict[str, pa.Table]:
    """Every table's rows of these trials, derived from their manifests now (nothing written)."""
    rows: dict[str, list] = {k: [] for k in SCHEMAS}
    for t in sorted(trial_ids):
        for kind, r in rows_for_trial(sweep_store, t).items():
            rows[kind] += r
    return {k: pa.Table.from_pylist(v, schema=SCHEMAS[k]) for k, v in rows.items()}
