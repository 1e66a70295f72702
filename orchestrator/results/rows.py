"""Rows from committed manifests: one results row per round, one layers row per
(round, layer), and each evaluation's rows from its current analysis files.

Committed manifests are the only truth; every row here can be derived again.
What older sweeps wrote differently is read through workers/migrate.py.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as _dt
from typing import Optional

from workers.evaluations import EVALUATIONS, current, evaluation_of_file
from workers.registry import UnknownName
from workers.migrate import old_round_row
from workers.spec import TrialSpec, cell_key
from workers.store import SweepStore
from workers.train import precision_of

from .schema import ROUND_COLUMNS, SCHEMA_VERSION, spec_columns


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


_CASTS = {str: lambda v: None if v is None else str(v), float: _num, int: lambda v: _num(v, int),
          bool: lambda v: None if v is None else bool(v)}


def _spec_values(spec: dict, metrics: dict) -> dict:
    """The spec's results columns, from a stored full spec (defaults where an
    older spec lacks a field). A round's metrics may override one: a method
    that builds its own network per round records its `width`."""
    out = {}
    for part, f in spec_columns():
        given = spec.get(part) or {} if part else spec
        default = None if f.default is dataclasses.MISSING else f.default
        value = metrics[f.name] if f.name in metrics else given.get(f.name, default)
        out[f.name] = _CASTS[f.metadata["rule"].kind](value)
    return out


def _cell_of(spec: dict) -> tuple[Optional[dict], Optional[int]]:
    """(grid cell, rounds of a finished lineage) of a stored full spec."""
    try:
        ts = TrialSpec.from_dict(spec)
    except (TypeError, ValueError, KeyError):
        return None, None
    return ts.cell(), ts.num_rounds


def _evaluation_rows(sweep_store: SweepStore, trial_id: str) -> tuple[dict[str, list[dict]], dict]:
    """Rows of the trial's current evaluation files (stale ones are left out),
    and what they add to its results rows: {(round, column): value}."""
    lin = sweep_store.lineage(trial_id)
    out: dict[str, list[dict]] = {e.table: [] for e in EVALUATIONS.values()}
    means: dict = {}
    base = {"sweep": sweep_store.sweep, "trial_id": trial_id, "schema_version": SCHEMA_VERSION}
    for name in lin.analyses():
        try:
            ev = evaluation_of_file(name)
        except UnknownName:
            continue  # written by an evaluation this lth-sweep does not have
        doc = current(lin, name)
        if doc is None:
            continue
        rows = ev.rows(trial_id, doc)
        out[ev.table] += [{**base, **r} for r in rows]
        means.update(ev.round_means(rows))
    return out, means


def _round_row(spec: dict, m: dict) -> dict:
    """A round's own measurements, from its manifest's metrics."""
    fused = m.get("fused_with")
    return {
        **_spec_values(spec, m),
        "density": _num(m.get("density")),
        "val_acc": _num(m.get("val_acc")),
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
        "val_per_class": _num(m.get("val_per_class"), int),
        "fused_with": ",".join(fused) if isinstance(fused, list) else fused,
        "test_images": _num(m.get("test_images"), int),
        "test_correct": _bits(m.get("test_correct")),
        "precision": precision_of(m.get("numerics")),
        "fallback": (m.get("numerics") or {}).get("fallback"),
    }


def _bits(text) -> Optional[bytes]:
    """metrics["test_correct"] (base64) as the raw packed bytes; None if absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def lineage_precision(manifests: dict[int, dict]) -> Optional[str]:
    """The precision a lineage's committed rounds ran in: their distinct ones,
    sorted and joined by "+" ("bf16+fp32" for one continued in another); None
    when no round recorded it (older sweeps keep their cells)."""
    found = {round_precision(man) for man in manifests.values()}
    found.discard(None)
    return "+".join(sorted(found)) or None


def round_rows(sweep: str, trial_id: str, k: int, man: dict, precision: Optional[str],
               means: Optional[dict] = None) -> tuple[dict, list[dict]]:
    """One committed round's results row and layers rows, from its manifest alone.
    `precision`: the lineage's (lineage_precision over its committed rounds);
    `means`: {(round, column): value} of its current evaluations. The one
    builder of rows: the full rebuild (rows_for_trial) and the driver's
    per-round append (orchestrator/results/rowfiles.py) both call it."""
    m, spec = man.get("metrics") or {}, man.get("spec") or {}
    means = means or {}
    base = {"sweep": sweep, "trial_id": trial_id, "round": k, "schema_version": SCHEMA_VERSION}
    cell, rounds = _cell_of(spec)
    row, cell = old_round_row(spec, _round_row(spec, m), cell)
    if cell is not None and precision is not None:
        # The same grid point in another arithmetic is another cell (seeds of one
        # cell are replicates); a lineage that ran in two is a cell of its own.
        cell = {**cell, "precision": precision}
    key = None if cell is None else cell_key(cell)
    result = {
        **base,
        **row,
        **{col: means.get((k, col)) for col in ROUND_COLUMNS},
        "cell_id": None if key is None else key[1],
        "cell": None if key is None else key[0],
        "lineage_rounds": rounds,
        "manifest_sha256": man.get("manifest_sha256"),
    }
    layers = [{**base, "layer": layer.get("layer"), "density": _num(layer.get("density")),
               "numel": _num(layer.get("numel"), int)} for layer in m.get("layers") or []]
    return result, layers


def round_precision(man: dict) -> Optional[str]:
    """The precision one committed round ran in (None where it recorded none)."""
    return precision_of((man.get("metrics") or {}).get("numerics"))


def rows_for_trial(sweep_store: SweepStore, trial_id: str) -> dict[str, list[dict]]:
    """Rows of every table for one trial: results and layers (one per intact
    committed round) and its evaluations; rounds carry their mean per suite."""
    results, layers = [], []
    extra, means = _evaluation_rows(sweep_store, trial_id)
    manifests = sweep_store.lineage(trial_id).manifests()
    precision = lineage_precision(manifests)
    for k, man in sorted(manifests.items()):
        row, layer_rows = round_rows(sweep_store.sweep, trial_id, k, man, precision, means)
        results.append(row)
        layers += layer_rows
    return {"results": results, "layers": layers, **extra}
