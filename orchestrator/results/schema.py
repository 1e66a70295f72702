"""What the tables hold: their columns, Arrow schemas and the schema version.

Built, never listed by hand: the spec's results columns come from
workers/spec.py (`spec_field(column=True)`), each evaluation's table and the
results columns it fills per round from its registry entry
(workers/evaluations/), so a new spec field or evaluation needs no edit here.
"""
from __future__ import annotations

import dataclasses

import pyarrow as pa

from workers.evaluations import EVALUATIONS
from workers.spec import spec_fields

# 2: imbalance, init, acc_<suite> columns; robustness/probe/cka tables
# 3: selection left the trial (query-time): val_per_class, bn_recalibrate, cell_id, cell,
#    lineage_rounds; no `selection` column; val_acc of legacy test-selected trials is null
# 4: test_images, test_correct (per-image results of the test split), precision; the cell
#    names the lineage's precision ("fp32", "bf16", "bf16+fp32"; left out where none is recorded)
# 5: manifest_sha256 (the digest of the manifest a round's row was made from: a run's start
#    checks the table against each lineage's pointer instead of reading every manifest)
SCHEMA_VERSION = 5

# Stored in each file's schema metadata: a reader can tell our shards (and
# their version) from any other Parquet file that was dropped into the folder.
META_TABLE = b"lth_sweep.table"
META_VERSION = b"lth_sweep.schema_version"

_TS = pa.timestamp("ms", tz="UTC")
_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}


class ResultsError(Exception):
    """A user-facing problem with the results table or a query (one line)."""


class NewerSchemaError(ResultsError):
    """A shard written by a newer lth-sweep: never rewritten (that would downgrade it)."""


def spec_columns() -> list[tuple[str, dataclasses.Field]]:
    """(part, field) of the spec fields that are results columns (workers/spec.py `column`)."""
    return [(part, f) for part, f in spec_fields() if f.metadata.get("column")]


def _columns(text: str) -> list[tuple[str, pa.DataType]]:
    """"name:type ..." -> [(name, arrow type)]; "ts" is a UTC timestamp in ms."""
    return [(n, _TS if t == "ts" else pa.type_for_alias(t)) for n, t in (c.split(":") for c in text.split())]


def _table_schema(name: str, fields: list) -> pa.Schema:
    """sweep, trial_id, `fields`, schema_version; tagged with the table's name and version."""
    return pa.schema([("sweep", pa.string()), ("trial_id", pa.string()), *fields, ("schema_version", pa.int32())],
                     metadata={META_TABLE: name.encode(), META_VERSION: str(SCHEMA_VERSION).encode()})


# The results columns evaluations fill per round (e.g. acc_cifar10c), in registry order.
ROUND_COLUMNS = [c for e in EVALUATIONS.values() for c in e.round_columns]

# A round's own measurements (its manifest's metrics). val_per_class: held-out images per class
# behind val_acc (null: none exist); fused_with: the lineages trained together with it (null: alone);
# test_correct: one bit per test image, right or not (workers/predictions.py: packbits, little
# bit order), test_images of them; precision: the round's arithmetic (bf16, fp32, fp64). The
# three are null for rounds committed before rounds recorded them. fallback: why a member of a
# fused group trained this round outside its fused program ("check failed", "out of memory",
# "error: <type>"; null: it fused, or it was never grouped). A nullable column added without a
# schema version: older rows read it as null, which is what they recorded.
_METRIC_COLUMNS = _columns("round:int64 density:double val_acc:double test_acc:double train_acc:double epochs:int64 "
                           "wall_s:double images_per_s:double node:string gpu_ids:string device:string "
                           "started_at:ts finished_at:ts checkpoint_uri:string val_per_class:int64 fused_with:string "
                           "test_images:int64 test_correct:binary precision:string fallback:string")

RESULTS_SCHEMA = _table_schema("results", [
    *[(f.name, _ARROW[f.metadata["rule"].kind]) for _, f in spec_columns()],
    *_METRIC_COLUMNS,
    # Each round's mean over an evaluation's rows (e.g. acc_cifar10c), when evaluated.
    *[(col, pa.float64()) for col in ROUND_COLUMNS],
    # The grid cell (every spec field but the seed) as a hash and as canonical JSON, and
    # the length of the finished lineage (round 0 included).
    *_columns("cell_id:string cell:string lineage_rounds:int64"),
    # The manifest this row was made from (null in rows written before schema 5).
    *_columns("manifest_sha256:string"),
])
LAYERS_SCHEMA = _table_schema("layers", _columns("round:int64 layer:string density:double numel:int64"))

# Every table by name: results and layers, then one per evaluation (one row per measurement).
SCHEMAS: dict[str, pa.Schema] = {
    "results": RESULTS_SCHEMA, "layers": LAYERS_SCHEMA,
    **{e.table: _table_schema(e.table, _columns(" ".join(f"{c}:{t}" for c, t in e.columns.items())))
       for e in EVALUATIONS.values()}}

# Row order within a shard (a stable sort: layers keep the model's order within a round).
SORT_KEYS: dict[str, tuple[str, ...]] = {"results": ("trial_id", "round"), "layers": ("trial_id", "round"),
                                         **{e.table: tuple(e.sort_keys) for e in EVALUATIONS.values()}}
