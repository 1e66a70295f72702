"""The Parquet results table: derived from committed round manifests, queried with SQL.

Committed manifests are the only truth; everything here can be thrown away
and rebuilt. Rows are sharded by the first two characters of the trial id:

    <sweep>/results/part-<xx>.parquet     one row per (trial_id, round)
    <sweep>/layers/part-<xx>.parquet      one row per (trial_id, round, layer)

Every trial's rows live in exactly one shard, and a shard is always rewritten
whole and atomically (FS.write), so updating a trial replaces its rows rather
than appending to them: a row can never be duplicated, and a kill mid-write
leaves the old shard or the new one. Both folders hold nothing but shards, so
`pandas.read_parquet(dir)` and `pyarrow.dataset.dataset(dir)` read them as is.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import threading
from collections import defaultdict
from typing import Iterable, Optional, Union

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from orchestrator.formatting import plain
from workers.evaluations import EVALUATIONS, current
from workers.spec import TrialSpec, cell_key, legacy_validation, spec_fields
from workers.store import SweepStore

# The results columns evaluations fill per round (e.g. acc_cifar10c).
ROUND_COLUMNS = [c for e in EVALUATIONS.values() for c in e.round_columns]

# 2: imbalance, init, acc_<suite> columns; robustness/probe/cka tables
# 3: selection left the trial (query-time): val_per_class, bn_recalibrate, cell_id, cell,
#    lineage_rounds; no `selection` column; val_acc of legacy test-selected trials is null
SCHEMA_VERSION = 3

_TS = pa.timestamp("ms", tz="UTC")
# Stored in each file's schema metadata: a reader can tell our shards (and
# their version) from any other Parquet file that was dropped into the folder.
_META_TABLE = b"lth_sweep.table"
_META_VERSION = b"lth_sweep.schema_version"

_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}


def _spec_columns() -> list[tuple[str, str, pa.DataType]]:
    """(part, name, type) of the spec fields that are results columns (workers/spec.py `column`)."""
    return [(part, f.name, _ARROW[f.metadata["rule"].kind]) for part, f in spec_fields()
            if f.metadata.get("column")]


def _columns(text: str) -> list[tuple[str, pa.DataType]]:
    """"name:type ..." -> [(name, arrow type)]; "ts" is a UTC timestamp in ms."""
    return [(n, _TS if t == "ts" else pa.type_for_alias(t)) for n, t in (c.split(":") for c in text.split())]


def _table_schema(name: str, fields: list) -> pa.Schema:
    """sweep, trial_id, `fields`, schema_version; tagged with the table's name and version."""
    return pa.schema([("sweep", pa.string()), ("trial_id", pa.string()), *fields, ("schema_version", pa.int32())],
                     metadata={_META_TABLE: name.encode(), _META_VERSION: str(SCHEMA_VERSION).encode()})


# A round's own measurements (its manifest's metrics). val_per_class: held-out images per class
# behind val_acc (null: none exist); fused_with: the lineages trained together with it (null: alone).
_METRIC_COLUMNS = _columns("round:int64 density:double val_acc:double test_acc:double train_acc:double epochs:int64 "
                           "wall_s:double images_per_s:double node:string gpu_ids:string device:string "
                           "started_at:ts finished_at:ts checkpoint_uri:string val_per_class:int64 fused_with:string")

RESULTS_SCHEMA = _table_schema("results", [
    *[(name, kind) for _, name, kind in _spec_columns()],
    *_METRIC_COLUMNS,
    # Each round's mean over an evaluation's rows (e.g. acc_cifar10c), when evaluated.
    *[(col, pa.float64()) for col in ROUND_COLUMNS],
    # The grid cell (every spec field but the seed) as a hash and as canonical JSON, and
    # the length of the finished lineage (round 0 included).
    *_columns("cell_id:string cell:string lineage_rounds:int64"),
])
LAYERS_SCHEMA = _table_schema("layers", _columns("round:int64 layer:string density:double numel:int64"))


# Evaluations after a lineage (workers/evaluations/), one row per measurement.
_SCHEMAS = {"results": RESULTS_SCHEMA, "layers": LAYERS_SCHEMA,
            **{e.table: _table_schema(e.table, _columns(" ".join(f"{c}:{t}" for c, t in e.columns.items())))
               for e in EVALUATIONS.values()}}


class ResultsError(Exception):
    """A user-facing problem with the results table or a query (one line)."""


class NewerSchemaError(ResultsError):
    """A shard written by a newer lth-sweep: never rewritten (that would downgrade it)."""


# --- rows from manifests ---------------------------------------------------

def _ts(value) -> Optional[_dt.datetime]:
    """The manifests hold ISO strings; a naive one is UTC (that is what lineage writes)."""
    if value is None or value == "":
        return None
    try:
        t = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _num(value, kind=float):
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _evaluation_rows(sweep_store: SweepStore, trial_id: str) -> tuple[dict[str, list[dict]], dict]:
    """Rows of the trial's current evaluation files (stale ones are left out),
    and what they add to its results rows: {(round, column): value}."""
    lin = sweep_store.lineage(trial_id)
    out: dict[str, list[dict]] = {e.table: [] for e in EVALUATIONS.values()}
    means: dict = {}
    base = {"sweep": sweep_store.sweep, "trial_id": trial_id, "schema_version": SCHEMA_VERSION}
    for name in lin.analyses():
        doc = current(lin, name)
        kind = name.partition("_")[0]
        if doc is None or kind not in EVALUATIONS:
            continue
        ev = EVALUATIONS[kind]
        rows = ev.rows(trial_id, doc)
        out[ev.table] += [{**base, **r} for r in rows]
        means.update(ev.round_means(rows))
    return out, means


_DEFAULT_LEGACY = {"selection": "val", "val_fraction": 0.1}


_CASTS = {str: lambda v: None if v is None else str(v), float: _num, int: lambda v: _num(v, int),
          bool: lambda v: None if v is None else bool(v)}


def _spec_values(spec: dict, metrics: dict) -> dict:
    """The spec's results columns, from a stored full spec (defaults where an
    older spec lacks a field). A round's metrics may override one: a method
    that builds its own network per round records its `width`."""
    out = {}
    for part, f in spec_fields():
        if not f.metadata.get("column"):
            continue
        given = spec.get(part) or {} if part else spec
        default = None if f.default is dataclasses.MISSING else f.default
        value = metrics[f.name] if f.name in metrics else given.get(f.name, default)
        out[f.name] = _CASTS[f.metadata["rule"].kind](value)
    return out


def _cell_of(spec: dict) -> tuple[Optional[dict], Optional[int]]:
    """(grid cell, rounds of a finished lineage) of a stored full spec. A trial
    written before selection moved to query time keeps its id; unless it used
    the then default (held-out 10% per class) its old protocol stays part of its
    cell, so it never poses as a seed of a trial that measured differently."""
    try:
        ts = TrialSpec.from_dict(spec)
    except (TypeError, ValueError, KeyError):
        return None, None
    cell = ts.cell()
    legacy = legacy_validation(spec)
    if legacy is not None and legacy != _DEFAULT_LEGACY:
        cell["legacy_selection"] = legacy
    return cell, ts.num_rounds


def rows_for_trial(sweep_store: SweepStore, trial_id: str) -> dict[str, list[dict]]:
    """Rows of every table for one trial: results and layers (one per intact
    committed round) and its evaluations; rounds carry their mean per suite."""
    results, layers = [], []
    extra, means = _evaluation_rows(sweep_store, trial_id)
    for k, man in sorted(sweep_store.lineage(trial_id).manifests().items()):
        m, spec = man.get("metrics") or {}, man.get("spec") or {}
        base = {"sweep": sweep_store.sweep, "trial_id": trial_id, "round": k,
                "schema_version": SCHEMA_VERSION}
        cell, rounds = _cell_of(spec)
        legacy = legacy_validation(spec)
        held_out = not (legacy and legacy["selection"] == "test")  # else val_acc was the test split's
        fused = m.get("fused_with")
        results.append({
            **base,
            **_spec_values(spec, m),
            "density": _num(m.get("density")),
            "val_acc": _num(m.get("val_acc")) if held_out else None,
            "test_acc": _num(m.get("test_acc")),
            "train_acc": _num(m.get("train_acc")),
            "epochs": _num(m.get("epochs"), int),
            "wall_s": _num(m.get("wall_s")),
            "images_per_s": _num(m.get("images_per_s")),
            "node": m.get("node"),
            "gpu_ids": None if m.get("gpu_ids") is None else str(m["gpu_ids"]),
            "device": m.get("device"),
            "started_at": _ts(m.get("started_at")),
            "finished_at": _ts(m.get("finished_at")),
            "checkpoint_uri": m.get("checkpoint_uri"),
            "val_per_class": _num(m.get("val_per_class"), int) if held_out else None,
            "fused_with": ",".join(fused) if isinstance(fused, list) else fused,
            **{col: means.get((k, col)) for col in ROUND_COLUMNS},
            "cell_id": None if cell is None else cell_key(cell)[1],
            "cell": None if cell is None else cell_key(cell)[0],
            "lineage_rounds": rounds,
        })
        for layer in m.get("layers") or []:
            layers.append({**base, "layer": layer.get("layer"),
                           "density": _num(layer.get("density")),
                           "numel": _num(layer.get("numel"), int)})
    return {"results": results, "layers": layers, **extra}


# --- shard files -------------------------------------------------------------

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


def _check_file(sweep_store: SweepStore, path: str, kind: str) -> int:
    """Refuse a file that is torn, not ours, or newer than this code; returns its
    schema version. Only the footer is read, so checking every shard before a
    query costs little."""
    short = _short(sweep_store, path)
    try:
        schema = pq.read_schema(path, filesystem=sweep_store.fs.fs)
    except Exception as e:  # pyarrow raises several types for a torn or foreign file
        raise ResultsError(f"{short}: not a readable Parquet file ({_first_line(e)}); "
                           "delete it, or rebuild the table") from None
    meta = schema.metadata or {}
    if meta.get(_META_TABLE) != kind.encode():
        raise ResultsError(f"{short}: not an lth-sweep {kind} file; "
                           f"the {kind}/ folder must hold only lth-sweep's shards")
    try:
        version = int(meta.get(_META_VERSION, b"0"))
    except ValueError:
        version = 0
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(f"{short}: written with results schema version {version}, this "
                               f"lth-sweep reads up to {SCHEMA_VERSION}; upgrade lth-sweep")
    return version


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _dataset(sweep_store: SweepStore, paths: list[str], kind: str) -> pads.Dataset:
    """The given shards as one lazy dataset with our schema. The explicit schema
    also reads older-version shards: missing columns come back as nulls."""
    ds, _ = _checked_dataset(sweep_store, paths, kind)
    return ds


def _checked_dataset(sweep_store: SweepStore, paths: list[str], kind: str) -> tuple[pads.Dataset, int]:
    versions = [_check_file(sweep_store, path, kind) for path in paths]
    ds = pads.dataset(paths, schema=_SCHEMAS[kind], format="parquet", filesystem=sweep_store.fs.fs)
    return ds, min(versions, default=SCHEMA_VERSION)


def results_dataset(sweep_store: SweepStore, kind: str = "results") -> Union[pads.Dataset, pa.Table]:
    """Every shard of `results` or `layers`, checked, as a lazy pyarrow dataset:
    duckdb then reads only the columns (and row groups) a query needs.

    Shards written by an older lth-sweep lack what this one derives from the
    manifests (the grid cell, the validation budget, which val_acc were really
    held out): then the table is derived again from the manifests, in memory
    (the next `run` rewrites the shards), so an old sweep reads like a new one."""
    folder = sweep_store.table_dir(kind)
    ds, version = _checked_dataset(sweep_store, [f"{folder}/{n}" for n in sweep_store.fs.listdir(folder)
                                                 if not _is_hidden(n)], kind)
    if version < SCHEMA_VERSION and kind in ("results", "layers"):
        return Collector(sweep_store).tables()[kind]
    return ds


def _to_table(dataset: Union[pads.Dataset, pa.Table], columns: Optional[list[str]] = None) -> pa.Table:
    if isinstance(dataset, pa.Table):
        return dataset.select(columns) if columns else dataset
    try:
        return dataset.to_table(columns=columns)
    except (pa.ArrowException, OSError) as e:  # a shard whose footer is fine but data is not
        raise ResultsError(f"cannot read the results table: {_first_line(e)}") from None


def load_table(sweep_store: SweepStore, kind: str = "results",
               columns: Optional[list[str]] = None) -> pa.Table:
    """All shards of `results` or `layers` as one pyarrow table (empty if none)."""
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


class Collector:
    """Keeps the shards equal to the manifests of the trials it is told about.

    One lock serialises every shard rewrite: Tune's callback calls update()
    from the driver as rounds arrive, and two read-modify-writes of the same
    shard must not interleave (the later would drop the earlier's rows).
    """

    def __init__(self, sweep_store: SweepStore):
        self.store = sweep_store
        self._lock = threading.Lock()

    def update(self, trial_ids: Iterable[str]) -> None:
        """Replace those trials' rows with fresh ones from their manifests."""
        by_shard: dict[str, set[str]] = defaultdict(set)
        for t in trial_ids:
            by_shard[shard_of(t)].add(t)
        with self._lock:
            for shard, tids in sorted(by_shard.items()):
                self._update_shard(shard, tids)

    def rebuild(self) -> None:
        """Rewrite every shard from all manifests; drop shards with no rows left."""
        with self._lock:
            by_shard: dict[str, list[str]] = defaultdict(list)
            for t in self.store.trial_ids():
                by_shard[shard_of(t)].append(t)
            for kind in _SCHEMAS:
                folder = self.store.table_dir(kind)
                for name in self.store.fs.listdir(folder):
                    # Leftovers of killed writes, and shards of trials that are gone.
                    # Foreign files are left alone: reading then names them.
                    if ".tmp-" in name or (_is_shard(name) and name not in by_shard):
                        self.store.fs.delete_file(f"{folder}/{name}")
            for shard, tids in sorted(by_shard.items()):
                self._write_shard(shard, self._rows(tids))

    def tables(self) -> dict[str, pa.Table]:
        """Every table as derived from the manifests now, without writing anything."""
        return self._rows(self.store.trial_ids())

    # --- internals (lock held) --------------------------------------------
    def _rows(self, trial_ids: Iterable[str]) -> dict[str, pa.Table]:
        rows: dict[str, list] = {k: [] for k in _SCHEMAS}
        for t in sorted(trial_ids):
            for kind, r in rows_for_trial(self.store, t).items():
                rows[kind] += r
        return {k: pa.Table.from_pylist(v, schema=_SCHEMAS[k]) for k, v in rows.items()}

    def _update_shard(self, shard: str, tids: set[str]) -> None:
        kept = {}
        try:
            for kind in _SCHEMAS:
                path = self.store.table_file(kind, shard)
                if self.store.fs.exists(path):
                    table = _to_table(_dataset(self.store, [path], kind))
                    stale = pc.is_in(table["trial_id"], value_set=pa.array(sorted(tids)))
                    kept[kind] = table.filter(pc.invert(stale))
                else:
                    kept[kind] = _SCHEMAS[kind].empty_table()
        except NewerSchemaError:
            raise  # written by a newer lth-sweep: rewriting it would downgrade it
        except ResultsError:
            # A torn/foreign shard is derived data: rebuild it from its trials' manifests.
            tids = {t for t in self.store.trial_ids() if shard_of(t) == shard}
            kept = {kind: schema.empty_table() for kind, schema in _SCHEMAS.items()}
        fresh = self._rows(tids)
        self._write_shard(shard, {k: pa.concat_tables([kept[k], fresh[k]]) for k in _SCHEMAS})

    def _write_shard(self, shard: str, tables: dict[str, pa.Table]) -> None:
        for kind, table in tables.items():
            path = self.store.table_file(kind, shard)
            if table.num_rows == 0:
                self.store.fs.delete_file(path)
                continue
            # A stable sort: layers keep the model's order within a round.
            keys = [k for k in ("trial_id", "round", "round_b") if k in table.column_names]
            table = table.sort_by([(k, "ascending") for k in keys])
            sink = pa.BufferOutputStream()
            pq.write_table(table.replace_schema_metadata(_SCHEMAS[kind].metadata), sink)
            self.store.fs.write(path, sink.getvalue().to_pybytes())


# --- queries -----------------------------------------------------------------

Frame = Union[pd.DataFrame, pa.Table, pads.Dataset]


def duck(sql: str, **tables: Frame) -> pd.DataFrame:
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
        raise ResultsError(_first_line(e)) from None
    finally:
        con.close()


def run_sql(sweep_store: SweepStore, sql: str) -> pd.DataFrame:
    """Any SQL over the views `results` and `layers` (duckdb dialect)."""
    return duck(sql, results=results_dataset(sweep_store, "results"),
                 layers=results_dataset(sweep_store, "layers"))


# --- output ------------------------------------------------------------------



def format_frame(df: pd.DataFrame, fmt: str = "table") -> str:
    if fmt == "json":
        cols = list(df.columns)
        rows = [{c: plain(v) for c, v in zip(cols, row)} for row in df.itertuples(index=False)]
        return json.dumps(rows, default=str, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        return buf.getvalue()
    if fmt == "markdown":
        def cell(v):
            p = plain(v)
            return "" if p is None else f"{p:.4f}" if isinstance(p, float) else str(p).replace("|", "\\|")
        head = "| " + " | ".join(map(str, df.columns)) + " |"
        rule = "|" + "|".join("---" for _ in df.columns) + "|"
        body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
        return "\n".join([head, rule] + body)
    if fmt != "table":
        raise ResultsError(f"unknown format {fmt!r}: use table, csv or json")
    cols = [str(c) for c in df.columns]
    cells, numeric = [], [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    for row in df.itertuples(index=False):
        out = []
        for v in row:
            p = plain(v)
            out.append("" if p is None else f"{p:.4f}" if isinstance(p, float) else str(p))
        cells.append(out)
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(vals, widths, numeric)).rstrip()
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])
