"""Pending row files: what the driver appends per committed round, until compaction.

    <sweep>/results/_rows/<trial_id>-r<k>.parquet   the results row of round k
    <sweep>/layers/_rows/<trial_id>-r<k>.parquet    its layers rows
    <sweep>/<evaluation table>/_rows/<trial_id>.parquet   a trial's rows of that table

Each file is written whole and atomically (FS.write), and replaces its key:
(trial_id, round) for a round file, every row of the trial for a trial file;
the key is in the file's name, so an empty file replaces too. Rewriting a
round therefore overwrites the same file, never adds one. The '_' folder is
skipped by `pandas.read_parquet(dir)` / `pyarrow.dataset.dataset(dir)`, so
they keep reading the shards alone (one row per key); load_table reads the
shards with the pending files laid over them. Compaction
(Collector.compact / sync, orchestrator/results/collector.py) folds the files
into the shards and checks every touched trial's rows against its lineage's
pointer (each row carries the digest of the manifest it was made from): a row
of a round since redone or un-committed never survives, its trial is derived
again from its manifests. Then it deletes the files it listed: a kill between
the two leaves files that replace rows equal to them, never duplicate them.
"""
from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.store import SweepStore

from .schema import META_TABLE, META_VERSION, SCHEMA_VERSION, SCHEMAS, SORT_KEYS, NewerSchemaError, ResultsError

ROWS = "_rows"
_NAME = re.compile(r"(?P<tid>[A-Za-z0-9][A-Za-z0-9._-]*?)(?:-r(?P<round>\d+))?\.parquet")


def rows_dir(store: SweepStore, kind: str) -> str:
    return f"{store.table_dir(kind)}/{ROWS}"


def round_file(trial_id: str, k: int) -> str:
    return f"{trial_id}-r{k}.parquet"


def trial_file(trial_id: str) -> str:
    return f"{trial_id}.parquet"


def key_of(name: str) -> Optional[tuple[str, Optional[int]]]:
    """(trial_id, round) of a round file, (trial_id, None) of a trial file; None
    for anything else (a killed write's '.…tmp-' leftover)."""
    m = None if name.startswith(".") or ".tmp-" in name else _NAME.fullmatch(name)
    if m is None:
        return None
    return m["tid"], None if m["round"] is None else int(m["round"])


def encode(table: pa.Table, kind: str) -> bytes:
    """A table as the bytes of one of our Parquet files (sorted, tagged with table and version)."""
    table = table.sort_by([(k, "ascending") for k in SORT_KEYS[kind]])
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(SCHEMAS[kind].metadata), sink)
    return sink.getvalue().to_pybytes()


def write(store: SweepStore, kind: str, name: str, rows: list[dict]) -> None:
    store.fs.write(f"{rows_dir(store, kind)}/{name}", encode(pa.Table.from_pylist(rows, schema=SCHEMAS[kind]), kind))


def write_trial(store: SweepStore, trial_id: str, rows: dict[str, list[dict]], evaluations: bool) -> None:
    """A trial's rows (rows_for_trial): a round file per round, and with `evaluations`
    a trial file per evaluation table."""
    for kind in ("results", "layers"):
        for k in sorted({r["round"] for r in rows[kind]}):
            write(store, kind, round_file(trial_id, k), [r for r in rows[kind] if r["round"] == k])
    for kind in SCHEMAS.keys() - {"results", "layers"} if evaluations else ():
        write(store, kind, trial_file(trial_id), rows[kind])


def delete(store: SweepStore, listed: dict[str, list[str]]) -> None:
    """Delete what listings of _rows/ found (row files, killed writes' leftovers): per table, names."""
    for kind, names in listed.items():
        for name in names:
            store.fs.delete_file(f"{rows_dir(store, kind)}/{name}")


def holds(store: SweepStore, path: str, data: bytes) -> bool:
    """Whether the file at `path` holds exactly `data` (False if it does not exist)."""
    try:
        return store.fs.read(path) == data
    except (FileNotFoundError, OSError):
        return False


def listing(store: SweepStore, kind: str) -> list[str]:
    """Every name in the table's _rows/ folder (row files and killed writes' leftovers)."""
    return store.fs.listdir(rows_dir(store, kind))


def pending(names: list[str]) -> dict[str, tuple[str, Optional[int]]]:
    return {n: key for n in names if (key := key_of(n)) is not None}


def _read(store: SweepStore, kind: str, name: str) -> Optional[pa.Table]:
    """One row file as our schema; None if it vanished (compacted meanwhile)."""
    return read_path(store, kind, f"{rows_dir(store, kind)}/{name}", f"{kind}/{ROWS}/{name}")


def read_path(store: SweepStore, kind: str, path: str, label: str) -> Optional[pa.Table]:
    """One of our Parquet files (a row file or a shard) in one read, as our schema
    (older files' missing columns as nulls); None if it does not exist."""
    try:
        data = store.fs.read(path)
    except (FileNotFoundError, OSError):
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise ResultsError(f"{label}: not a readable Parquet file ({e}); delete it, "
                           "or rebuild the table") from None
    meta = table.schema.metadata or {}
    if meta.get(META_TABLE) != kind.encode():
        raise ResultsError(f"{label}: not an lth-sweep {kind} file")
    if int(meta.get(META_VERSION, b"0")) > SCHEMA_VERSION:
        raise NewerSchemaError(f"{label}: written with a newer results schema; upgrade lth-sweep")
    schema = SCHEMAS[kind]
    return pa.table({f.name: table[f.name] if f.name in table.column_names else pa.nulls(len(table), f.type)
                     for f in schema}, schema=schema)


def overlay(store: SweepStore, kind: str, base: pa.Table, names: list[str]) -> pa.Table:
    """`base` (the shards) with every pending file's key replaced by that file's rows."""
    keys = pending(names)
    if not keys:
        return base
    read = {n: _read(store, kind, n) for n in keys}
    keys = {n: key for n, key in keys.items() if read[n] is not None}
    whole = sorted({tid for tid, k in keys.values() if k is None})
    rounds = sorted({f"{tid}/{k}" for tid, k in keys.values() if k is not None})
    drop = pc.is_in(base["trial_id"], value_set=pa.array(whole, pa.string()))
    if rounds:
        joined = pc.binary_join_element_wise(base["trial_id"], pc.cast(base["round"], pa.string()), "/")
        drop = pc.or_(drop, pc.is_in(joined, value_set=pa.array(rounds, pa.string())))
    kept = base.filter(pc.invert(pc.fill_null(drop, False)))
    table = pa.concat_tables([kept.cast(SCHEMAS[kind]), *(read[n] for n in sorted(keys))])
    return table.sort_by([(k, "ascending") for k in SORT_KEYS[kind]])
