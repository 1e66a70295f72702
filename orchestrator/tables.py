"""The tables people cite: winning tickets and dense-vs-ticket per grid cell.

One rule each, used by `query`, `report` and the Python API:

- the winning ticket of a trial: workers/selection.py (best accuracy on the
  selection split, ties to the sparser round), chosen at query time with
  `select="val"` (held-out images, the default) or `"test"` (the paper's protocol);
- a grid cell: every spec field except the seed (`cell_id`, from the spec's
  canonical JSON), so trials that differ in anything but the seed are never
  averaged together;
- the gain of a cell: the mean over its seeds of the paired difference ticket
  minus dense *of the same lineage*, with a two-sided 95% t interval
  (none for a single seed, never a zero-width one). Only finished lineages
  count: the winner of a half-done lineage is not its winning ticket.
"""
from __future__ import annotations

import json
import math
from typing import Optional

import pandas as pd

from orchestrator.formatting import plain
from orchestrator.results import Frame, sql_over_frames
from workers import selection
from workers.spec import SHOWN, cell_fields, spec_fields

# Shown for every cell (workers/spec.py `shown`); any other spec field is shown where the cells differ in it.
FIXED = list(SHOWN)
CONFIDENCE = 0.95


# Spec columns by sub-spec, to rebuild a cell from a frame's own columns.
_CELL_PARTS: dict[str, list[str]] = {}
for _part, _f in spec_fields():
    if _f.metadata.get("column") and _part:
        _CELL_PARTS.setdefault(_part, []).append(_f.name)


def with_cells(frame: Frame) -> Frame:
    """`frame` with the cell columns this module groups by. Result rows always
    have them; a hand-made frame without them gets a cell from its own grid
    columns (and counts as finished lineages)."""
    if not isinstance(frame, pd.DataFrame) or {"cell", "cell_id", "lineage_rounds", "val_per_class"} <= set(frame):
        return frame
    from workers.spec import cell_key
    d = frame.copy()
    if "cell" not in d:
        def cell(row):
            c = {part: {k: plain(row.get(k)) for k in keys if k in row and plain(row.get(k)) is not None}
                 for part, keys in _CELL_PARTS.items()}
            return cell_key({k: v for k, v in c.items() if v})[0]
        d["cell"] = [cell(r) for r in d.to_dict("records")]
    if "cell_id" not in d:
        d["cell_id"] = [cell_key(json.loads(c))[1] for c in d["cell"]]
    for col in ("lineage_rounds", "val_per_class"):
        if col not in d:
            d[col] = pd.array([None] * len(d), dtype="Int64")
    return d


def cell_without(cells: pd.Series, drop: tuple[str, ...]) -> pd.Series:
    """Each cell's JSON with the named fields removed (e.g. augmentation, to
    group the cells aug* chooses among). Defaults never appear in a cell, so a
    field left out and a field removed read the same."""
    from workers.spec import cell_key

    def strip(c):
        if not isinstance(c, str):
            return c
        d = json.loads(c)
        out = {k: ({f: x for f, x in v.items() if f not in drop} if isinstance(v, dict) else v)
               for k, v in d.items() if k not in drop}
        return cell_key({k: v for k, v in out.items() if v != {}})[0]
    memo = {c: strip(c) for c in cells.dropna().unique()}
    return cells.map(lambda c: memo.get(c, c))


def winning_tickets(frame: Frame, select: str = selection.DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per trial: its winning ticket under `select` (a trial with no
    round carrying the selection metric has none)."""
    selection.check(select)
    out = sql_over_frames(f"SELECT * FROM ({selection.winners_sql(select)}) ORDER BY trial_id", results=frame)
    out.insert(out.columns.get_loc("round"), "selection", select)
    return out


def t_interval(mean: float, sd: float, n: int,
               confidence: float = CONFIDENCE) -> tuple[Optional[float], Optional[float]]:
    """Two-sided t interval of a mean of n paired differences; (None, None) for n < 2."""
    if n is None or n < 2 or mean is None or sd is None or pd.isna(mean) or pd.isna(sd):
        return None, None
    from scipy.stats import t  # lazily: only tables with several seeds need it
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * float(sd) / math.sqrt(n)
    return float(mean) - half, float(mean) + half


def _per_cell_sql(select: str) -> str:
    fixed = ", ".join(f"any_value({k}) AS {k}" for k in FIXED)
    return f"""
        WITH per_trial AS (
            SELECT trial_id, any_value(coalesce(cell_id, trial_id)) AS cell_id, any_value(cell) AS cell,
                   {fixed}, count(*) AS n_rounds, max(lineage_rounds) AS lineage_rounds,
                   min(val_per_class) AS val_per_class,
                   max(CASE WHEN round = 0 THEN test_acc END) AS dense
            FROM results GROUP BY trial_id),
        winners AS ({selection.winners_sql(select)}),
        paired AS (
            SELECT p.*, w.test_acc AS ticket, w.density AS ticket_density,
                   (p.lineage_rounds IS NULL OR p.n_rounds >= p.lineage_rounds) AS complete
            FROM per_trial p LEFT JOIN winners w USING (trial_id))
        SELECT cell_id, any_value(cell) AS cell, {", ".join(f"any_value({k}) AS {k}" for k in FIXED)},
               min(val_per_class) FILTER (WHERE complete)       AS val_per_class,
               count(ticket - dense) FILTER (WHERE complete)    AS n_seeds,
               count(*) FILTER (WHERE NOT complete)             AS n_unfinished,
               avg(dense) FILTER (WHERE complete)               AS dense_test_acc,
               stddev_samp(dense) FILTER (WHERE complete)       AS dense_test_std,
               avg(ticket) FILTER (WHERE complete)              AS ticket_test_acc,
               stddev_samp(ticket) FILTER (WHERE complete)      AS ticket_test_std,
               avg(ticket_density) FILTER (WHERE complete)      AS ticket_density,
               avg(ticket - dense) FILTER (WHERE complete)      AS gain,
               stddev_samp(ticket - dense) FILTER (WHERE complete) AS gain_sd
        FROM paired GROUP BY cell_id
    """


def cell_columns(cells: pd.Series) -> pd.DataFrame:
    """Per row, the spec fields (beyond FIXED) in which the given cells differ:
    the columns that tell two rows of a table apart."""
    parsed = {c: (cell_fields(json.loads(c)) if isinstance(c, str) else {}) for c in cells.dropna().unique()}
    names: list[str] = []
    for fields in parsed.values():
        names += [k for k in fields if k not in names and k not in FIXED]
    varying = [k for k in names if len({json.dumps(f.get(k), sort_keys=True) for f in parsed.values()}) > 1]
    return pd.DataFrame({k: [parsed.get(c, {}).get(k) if isinstance(c, str) else None for c in cells]
                         for k in varying}, index=cells.index)


def compare(frame: Frame, select: str = selection.DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per grid cell: dense (round 0) and winning-ticket test accuracy
    over the cell's finished lineages, and the paired gain with its 95% interval."""
    selection.check(select)
    c = sql_over_frames(_per_cell_sql(select), results=with_cells(frame))
    extras = cell_columns(c["cell"]) if len(c) else pd.DataFrame(index=c.index)
    ci = [t_interval(m, sd, n) for m, sd, n in zip(c["gain"], c["gain_sd"], c["n_seeds"])]
    out = pd.concat([c[FIXED], extras], axis=1)
    out["selection"] = select
    for col in ["val_per_class", "n_seeds", "dense_test_acc", "dense_test_std", "ticket_test_acc",
                "ticket_test_std", "ticket_density", "gain"]:
        out[col] = c[col]
    out["gain_ci_low"] = pd.array([lo for lo, _ in ci], dtype="Float64")
    out["gain_ci_high"] = pd.array([hi for _, hi in ci], dtype="Float64")
    if (c["n_unfinished"] > 0).any():
        out["n_unfinished"] = c["n_unfinished"]
    out["cell_id"] = c["cell_id"]
    order = [*FIXED, *extras.columns]
    return out.sort_values(order, na_position="first", kind="stable").reset_index(drop=True)


def protocols(frame: Frame) -> pd.DataFrame:
    """Both protocols side by side per cell, from the same lineages: the gain
    selected on held-out images, the gain selected on the test split, and the
    selection bias (test-selected gain minus val-selected gain)."""
    val, test = compare(frame, "val"), compare(frame, "test")
    keys = [c for c in val.columns if c not in _STATS]
    both = val.drop(columns=["selection"]).merge(
        test[["cell_id", "n_seeds", "gain", "gain_ci_low", "gain_ci_high", "ticket_density"]],
        on="cell_id", suffixes=("_val", "_test"), how="outer")
    both["selection_bias"] = both["gain_test"] - both["gain_val"]
    cols = [k for k in keys if k not in ("selection", "cell_id")] + [
        "val_per_class", "n_seeds_val", "gain_val", "gain_ci_low_val", "gain_ci_high_val",
        "n_seeds_test", "gain_test", "gain_ci_low_test", "gain_ci_high_test", "selection_bias", "cell_id"]
    out = both[[c for c in dict.fromkeys(cols) if c in both]]
    order = [c for c in keys if c not in ("selection", "cell_id")]
    return out.sort_values(order, na_position="first", kind="stable").reset_index(drop=True)


_STATS = {"val_per_class", "n_seeds", "dense_test_acc", "dense_test_std", "ticket_test_acc", "ticket_test_std",
          "ticket_density", "gain", "gain_ci_low", "gain_ci_high", "n_unfinished"}


def protocol_line(select: Optional[str], frame: Frame) -> str:
    """The sentence every table and figure carries: the selection protocol, the
    validation budget and how BatchNorm was measured, read off the result rows."""
    frame = with_cells(frame)
    if isinstance(frame, pd.DataFrame) and "bn_recalibrate" not in frame:
        frame = frame.assign(bn_recalibrate=False)
    d = sql_over_frames("SELECT DISTINCT val_per_class, bn_recalibrate FROM results", results=frame)
    held = sorted({int(v) for v in d["val_per_class"].dropna()})
    if not held:
        budget = "no held-out validation images"
    elif len(held) == 1:
        budget = f"{held[0]} held-out images per class"
    else:
        budget = f"{held[0]}-{held[-1]} held-out images per class (it differs between cells)"
    if d["val_per_class"].isna().any() and held:
        budget += " (none where the subset leaves none, or not recorded)"
    bn = {bool(b) for b in d["bn_recalibrate"].dropna()}
    bn_text = ("recalibrated on the training subset before each evaluation" if bn == {True} else
               "as trained (running averages)" if bn <= {False} else
               "recalibrated in some cells, as trained in others")
    ticket = f"Winning ticket: {selection.describe(select)}. " if select else ""
    return (f"{ticket}Validation budget: {budget}. "
            f"BatchNorm statistics: {bn_text}. Gain: mean paired difference ticket - dense over seeds, "
            f"{int(CONFIDENCE * 100)}% t interval.")


def notes(table: pd.DataFrame, select: str) -> list[str]:
    """One-line remarks a reader of `table` (a compare() result) must see."""
    out = []
    if select == "val":
        none = table[(table["n_seeds"] == 0) & table["dense_test_acc"].notna()]
        if len(none):
            out.append(f"{len(none)} cell(s) have no held-out validation images (e.g. fraction 1.0): their "
                       "winning tickets are missing under --select val; --select test is the paper's protocol")
    if "n_unfinished" in table and table["n_unfinished"].sum():
        out.append(f"{int(table['n_unfinished'].sum())} unfinished lineage(s) are not counted")
    if (table["n_seeds"] == 1).any():
        out.append("cells with one seed have no interval; add seeds for one")
    return out


__all__ = ["CONFIDENCE", "FIXED", "cell_columns", "cell_without", "compare", "notes", "protocol_line", "protocols",
           "t_interval", "winning_tickets", "with_cells"]
