"""The paired seeds of each grid cell, the set every number of a compare row
comes from (orchestrator/tables.py shapes the tables people cite from it).

A frame is the results rows (orchestrator/results): a frame without the
cell columns is refused, never grouped by a partial key. `paired` gives one
row per trial: its dense round (0) and its winning ticket under a protocol,
side by side with their per-image results on the test split; a trial is a
seed of its cell's row when its lineage is finished and it has both.
`cell_stats` gives one row per cell: counts, means and spreads over those
seeds, and the gain's interval and p-value (orchestrator/stats.py) by the
asked method, or the fallback a row's rounds allow (`ci_method`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator import stats
from orchestrator.results import Frame, ResultsError, sql_over_frames
from workers import selection
from workers.migrate import OLD_FRAME_COLUMNS
from workers.spec import SHOWN

FIXED = list(SHOWN)  # shown for every cell; tables.py shows any other field where cells differ

CIS = ("bootstrap", "t")
DEFAULT_CI = "bootstrap"
# ci_method of a row: which interval (and p-value) it carries.
BOOT_SEEDS, BOOT_IMAGES = "bootstrap seeds+images", "bootstrap images (1 seed)"
T_SEEDS, T_NO_PREDICTIONS = "t over seeds", "t over seeds (no per-image predictions)"
T_MISMATCH = "t over seeds (per-image predictions disagree with test_acc)"
T_SPLITS = "t over seeds (its seeds were tested on different test splits)"
CELL_COLUMNS = ("cell", "cell_id", "lineage_rounds")
# Columns a frame from an older lth-sweep may lack, read as null.
_OPTIONAL = OLD_FRAME_COLUMNS


def _names(frame: Frame) -> list[str]:
    return list(frame.columns) if isinstance(frame, pd.DataFrame) else list(frame.schema.names)


def with_cells(frame: Frame) -> Frame:
    """`frame` if it carries the cell columns every results row has (cell,
    cell_id, lineage_rounds). A frame without them is refused: cells rebuilt
    from a few columns would merge lineages that differ in epochs, lr, rate,
    rewind epoch, ..."""
    missing = [c for c in CELL_COLUMNS if c not in _names(frame)]
    if missing:
        raise ResultsError(f"the frame lacks the column(s) {', '.join(missing)} that define a grid cell; use the "
                           "rows load_results() returns (grouping by a few spec columns would merge cells)")
    return frame


def narrow(frame: Frame) -> Frame:
    """Only the columns these tables read: an in-memory frame's other columns
    (timestamps, node, evaluation means) are never converted for the query."""
    need = {"trial_id", "round", "density", "val_acc", "test_acc", *CELL_COLUMNS, *_OPTIONAL, *FIXED}
    if isinstance(frame, pd.DataFrame):
        return frame[[c for c in frame.columns if c in need]]
    if isinstance(frame, pa.Table):
        return frame.select([c for c in frame.schema.names if c in need])
    return frame


def results_view(frame: Frame) -> str:
    """The `results` view over the registered `rows`, with the optional columns it lacks as nulls."""
    have = set(_names(with_cells(frame)))
    extra = "".join(f", NULL::{t} AS {c}" for c, t in _OPTIONAL.items() if c not in have)
    return f"results AS (SELECT *{extra} FROM rows)"


def _paired_sql(select: str) -> str:
    """One row per trial: its cell, whether its lineage is finished, its dense
    round (0) and winning ticket side by side, with their per-image results."""
    fixed = ", ".join(f"any_value({k}) AS {k}" for k in FIXED)
    return f"""
        per_trial AS (
            SELECT trial_id, any_value(coalesce(cell_id, trial_id)) AS cell_id, any_value(cell) AS cell,
                   {fixed}, count(*) AS n_rounds, max(lineage_rounds) AS lineage_rounds,
                   min(val_per_class) AS val_per_class,
                   max(CASE WHEN round = 0 THEN test_acc END) AS dense,
                   any_value(test_correct) FILTER (WHERE round = 0) AS dense_correct,
                   any_value(test_images) FILTER (WHERE round = 0) AS dense_images
            FROM results GROUP BY trial_id),
        winners AS ({selection.winners_sql(select)})
        SELECT p.*, w.test_acc AS ticket, w.density AS ticket_density, w.test_correct AS ticket_correct,
               w.test_images AS ticket_images,
               (p.lineage_rounds IS NULL OR p.n_rounds >= p.lineage_rounds) AS complete
        FROM per_trial p LEFT JOIN winners w USING (trial_id) ORDER BY cell_id, trial_id
    """


def paired(frame: Frame, select: str = selection.DEFAULT_SELECTION) -> pd.DataFrame:
    """One row per trial (ordered by cell_id, trial_id): dense and ticket test
    accuracy, `paired` (finished, with both: a seed of its cell's row) and `gain`."""
    selection.check(select)
    p = sql_over_frames(f"WITH {results_view(frame)}, {_paired_sql(select)}", rows=narrow(frame))
    p["complete"] = p["complete"].astype(bool)
    p["paired"] = p["complete"] & p["dense"].notna() & p["ticket"].notna()
    p["gain"] = (p["ticket"] - p["dense"]).astype(float)
    return p


def _image_patterns(seeds: pd.DataFrame) -> tuple[Optional[tuple[np.ndarray, np.ndarray]], str]:
    """The cell's image patterns and their counts (stats.image_patterns), or
    (None, the t fallback's label) unless every seed has both rounds' per-image
    results over the same test images and they reproduce its test accuracies."""
    pairs, sizes = [], set()
    for r in seeds.itertuples(index=False):
        n, m = r.dense_images, r.ticket_images
        if r.dense_correct is None or r.ticket_correct is None or pd.isna(n) or pd.isna(m) or n != m or n <= 0:
            return None, T_NO_PREDICTIONS
        pairs.append((r.dense_correct, r.ticket_correct))
        sizes.add(int(n))
    if len(sizes) != 1:  # seeds of one cell share one test split; the bootstrap is built on that
        return None, T_SPLITS
    n = sizes.pop()
    patterns, counts = stats.image_patterns(pairs, n)
    per_seed = (counts @ patterns.astype(np.float64)) / n
    if np.abs(per_seed - seeds["gain"].to_numpy(dtype=float)).max() > 1e-9:
        return None, T_MISMATCH  # test_acc is right/n exactly: these bits are not its rounds'
    return (patterns, counts), BOOT_SEEDS if len(pairs) > 1 else BOOT_IMAGES


def _interval(seeds: pd.DataFrame, cell_id: str, ci: str) -> dict:
    """gain_ci_low/high, ci_method and p_value of one cell from its paired seeds."""
    n = len(seeds)
    if n == 0:
        return {"gain_ci_low": None, "gain_ci_high": None, "ci_method": None, "p_value": np.nan}
    table, method = _image_patterns(seeds) if ci == "bootstrap" else (None, T_SEEDS)
    if table is not None:
        b = stats.paired_bootstrap(*table, cell_id)
        return {"gain_ci_low": b.low, "gain_ci_high": b.high, "ci_method": method, "p_value": b.p_value}
    mean, sd = seeds["gain"].mean(), seeds["gain"].std()
    low, high = stats.t_interval(mean, sd, n)
    return {"gain_ci_low": low, "gain_ci_high": high, "ci_method": method, "p_value": stats.t_test(mean, sd, n)}


def cell_stats(p: pd.DataFrame, ci: Optional[str]) -> pd.DataFrame:
    """One row per cell from paired(): counts, means and spreads over the paired
    seeds and, unless `ci` is None, the interval columns."""
    rows = []
    for cell_id, g in p.groupby("cell_id", sort=False):
        done = g[g["complete"]]
        s = done[done["paired"]]
        row = {"cell_id": cell_id, "cell": g["cell"].dropna().iloc[0] if g["cell"].notna().any() else None,
               **{k: g[k].iloc[0] for k in FIXED}, "val_per_class": done["val_per_class"].min(),
               "n_seeds": len(s), "n_no_ticket": len(done) - len(s), "n_unfinished": len(g) - len(done),
               "dense_test_acc": s["dense"].mean(), "dense_test_std": s["dense"].std(),
               "ticket_test_acc": s["ticket"].mean(), "ticket_test_std": s["ticket"].std(),
               "ticket_density": s["ticket_density"].mean(), "gain": s["gain"].mean(), "gain_sd": s["gain"].std(),
               "prob_ticket_better": stats.prob_better(s["gain"])}
        if ci is not None:
            row.update(_interval(s, cell_id, ci))
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["val_per_class"] = pd.array([None if pd.isna(v) else int(v) for v in out["val_per_class"]], dtype="Int64")
    return out


def check_ci(ci: str) -> str:
    if ci not in CIS:
        raise ResultsError(f"unknown interval {ci!r}: use bootstrap (seeds and test images, the default) or t "
                           "(seed-level t interval)")
    return ci


__all__ = ["BOOT_IMAGES", "BOOT_SEEDS", "CIS", "DEFAULT_CI", "FIXED", "T_MISMATCH", "T_NO_PREDICTIONS", "T_SEEDS", "T_SPLITS",
           "cell_stats", "check_ci", "narrow", "paired", "results_view", "with_cells"]
