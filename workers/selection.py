"""The winning-ticket rule, defined once.

A trial's winning ticket is its round with the best accuracy on the
selection split, ties going to the sparser round and then to the earlier
one; its dense baseline is round 0. Which split selects is a query-time
choice, never part of a trial:

    val   the held-out validation images (`val_per_class` per class, drawn
          from the training split outside the subset): the honest default
    test  the test split itself, as the paper did: every gain it reports is
          biased upwards (a ticket chosen on test can only look better)

`RANKING` is the rule; the Python (evaluations), pandas (report) and SQL
(query) forms below are derived from it, so the three cannot drift apart.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

SELECTIONS = ("val", "test")
DEFAULT_SELECTION = "val"


class SelectionError(ValueError):
    """An unknown selection protocol (a one-line, user-facing message)."""


def check(select: str) -> str:
    if select not in SELECTIONS:
        raise SelectionError(f"unknown selection {select!r}: use val (held-out images, the default) "
                             "or test (the paper's protocol)")
    return select


def metric(select: str) -> str:
    """The column a protocol ranks rounds by."""
    return f"{check(select)}_acc"


def ranking(select: str) -> list[tuple[str, bool]]:
    """(column, descending) in priority order: best accuracy, then sparser, then earlier."""
    return [(metric(select), True), ("density", False), ("round", False)]


def describe(select: str) -> str:
    return {"val": "selection on held-out validation images",
            "test": "selection on the test split (the paper's protocol; biased upwards)"}[check(select)]


# --- Python: a list of round metrics (evaluations inside a trial) -------------

def best_round(metrics: Iterable[dict], select: str) -> Optional[int]:
    """The winning round of one trial's committed rounds, or None when no round
    has the selection metric (no held-out images exist for `val`)."""
    rows = [m for m in metrics if _finite(m.get(metric(select)))]
    if not rows:
        return None

    def key(m):
        return tuple(-m[c] if desc else (m[c] if m.get(c) is not None else math.inf)
                     for c, desc in ranking(select))
    return min(rows, key=key)["round"]


def winning_rounds(metrics: list[dict]) -> list[int]:
    """The winning rounds under every protocol (what evaluations must cover)."""
    return sorted({k for s in SELECTIONS if (k := best_round(metrics, s)) is not None})


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- pandas: any frame with the ranking columns -------------------------------

def winners_frame(frame, select: str, by: list[str]):
    """Per `by` group, the row that wins under `select` (rows without the
    selection metric never win)."""
    cols = [c for c, _ in ranking(select)]
    ok = frame.dropna(subset=[metric(select)])
    ordered = ok.sort_values(cols, ascending=[not d for _, d in ranking(select)], kind="stable",
                             na_position="last")
    return ordered.drop_duplicates(by)


# --- SQL (duckdb): the `results` view ----------------------------------------

def winners_sql(select: str, table: str = "results") -> str:
    """Rows of `table` that are their trial's winning ticket under `select`."""
    order = []
    for col, desc in ranking(select):
        # arg_max takes the largest tuple: negate what should be small.
        order.append(col if desc else f"-coalesce({col}, 1e300)")
    return f"""
        WITH best AS (
            SELECT trial_id, arg_max(round, ({", ".join(order)})) AS round
            FROM {table} WHERE {metric(select)} IS NOT NULL GROUP BY trial_id)
        SELECT r.* FROM {table} r SEMI JOIN best b ON r.trial_id = b.trial_id AND r.round = b.round
    """


__all__ = ["DEFAULT_SELECTION", "SELECTIONS", "SelectionError", "best_round", "check", "describe", "metric",
           "ranking", "winners_frame", "winners_sql", "winning_rounds"]
