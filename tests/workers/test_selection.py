"""The winning-ticket rule (workers/selection.py), as DESIGN.md states it: the
round with the best accuracy on the selection split, ties to the sparser
round (then the earlier); round 0 is the dense baseline and a candidate like
any other; `val` unless told otherwise. The Python, pandas and SQL forms must
name the same round, or evaluations, `report` and `query` disagree."""
from __future__ import annotations

import math

import duckdb
import pandas as pd
import pytest

from workers import selection as S


def rows(val, test, density=None):
    """One trial's rounds: accuracies per round, IMP's densities unless given."""
    density = density or [0.8 ** k for k in range(len(val))]
    return [{"trial_id": "t", "round": k, "density": d, "val_acc": v, "test_acc": t}
            for k, (v, t, d) in enumerate(zip(val, test, density))]


def test_the_default_is_the_held_out_split():
    assert S.DEFAULT_SELECTION == "val" and S.SELECTIONS == ("val", "test")
    assert S.metric("val") == "val_acc" and S.metric("test") == "test_acc"
    assert S.ranking("test") == [("test_acc", True), ("density", False), ("round", False)]
    assert "biased" in S.describe("test") and "validation" in S.describe("val")


@pytest.mark.parametrize("bad", ["train", "VAL", "", None])
def test_an_unknown_protocol_is_a_one_line_user_error(bad):
    for fn in (S.check, S.metric, S.describe, lambda s: S.best_round(rows([0.5], [0.5]), s)):
        with pytest.raises(S.SelectionError, match="unknown selection .*use val .*or test") as e:
            fn(bad)
        assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def test_each_protocol_picks_the_best_round_on_its_own_split():
    ms = rows(val=[0.50, 0.62, 0.70, 0.55], test=[0.40, 0.66, 0.60, 0.58])
    assert S.best_round(ms, "val") == 2
    assert S.best_round(ms, "test") == 1
    assert S.winning_rounds(ms) == [1, 2]


def test_the_dense_round_0_can_win():
    ms = rows(val=[0.9, 0.6, 0.7], test=[0.9, 0.6, 0.7])
    assert S.best_round(ms, "val") == S.best_round(ms, "test") == 0
    assert S.winning_rounds(ms) == [0]  # one round, listed once


def test_a_tie_goes_to_the_sparser_round_not_the_earlier_one():
    ms = rows(val=[0.7, 0.6, 0.7, 0.5], test=[0.6, 0.6, 0.6, 0.6])
    assert S.best_round(ms, "val") == 2  # ties with the dense round 0
    assert S.best_round(ms, "test") == 3  # four-way tie: the sparsest
    # Sparser wins even where it is the earlier round (rounds of a method whose
    # density does not fall with the round number).
    odd = rows(val=[0.5, 0.7, 0.7], test=[0.5, 0.5, 0.5], density=[1.0, 0.3, 0.6])
    assert S.best_round(odd, "val") == 1
    assert S.best_round(list(reversed(odd)), "val") == 1  # the input order is not a tie-break


def test_a_tie_in_accuracy_and_density_goes_to_the_earlier_round():
    ms = rows(val=[0.5, 0.7, 0.7], test=[0.5, 0.5, 0.5], density=[1.0, 0.64, 0.64])
    assert S.best_round(ms, "val") == 1
    assert S.best_round(list(reversed(ms)), "val") == 1


def test_rounds_without_the_metric_never_win():
    nan, inf = float("nan"), float("inf")
    # No held-out images (fraction 1.0): no val winner, test still has one.
    none = rows(val=[None, None, None], test=[0.3, 0.5, 0.4])
    assert S.best_round(none, "val") is None and S.best_round(none, "test") == 1
    assert S.winning_rounds(none) == [1]
    assert S.best_round([], "val") is None and S.winning_rounds([]) == []
    # Missing, NaN, infinite, boolean or textual values are not accuracies.
    odd = rows(val=[0.4, nan, inf, True, "0.9", 0.3], test=[0.1] * 6)
    odd.append({"trial_id": "t", "round": 6, "density": 0.2, "test_acc": 0.2})  # no val_acc key
    assert S.best_round(odd, "val") == 0
    assert S.best_round(odd, "test") == 6


def test_a_round_without_a_density_loses_a_tie():
    ms = [{"round": 0, "density": None, "val_acc": 0.7}, {"round": 1, "val_acc": 0.7},
          {"round": 2, "density": 1.0, "val_acc": 0.7}]
    assert S.best_round(ms, "val") == 2
    assert S.best_round(ms[:2], "val") == 0  # neither has one: the earlier


# Trials that exercise every tie-break, for the three forms to agree on.
TRIALS = {
    "best": rows(val=[0.50, 0.62, 0.70, 0.55], test=[0.40, 0.66, 0.60, 0.58]),
    "dense": rows(val=[0.9, 0.6, 0.7], test=[0.9, 0.6, 0.7]),
    "sparser": rows(val=[0.7, 0.6, 0.7, 0.5], test=[0.6, 0.6, 0.6, 0.6]),
    "odd_density": rows(val=[0.5, 0.7, 0.7], test=[0.5, 0.5, 0.5], density=[1.0, 0.3, 0.6]),
    "earlier": rows(val=[0.5, 0.7, 0.7], test=[0.5, 0.5, 0.5], density=[1.0, 0.64, 0.64]),
    "no_val": rows(val=[None, None], test=[0.3, 0.5]),
    "some_val": rows(val=[None, 0.4, None], test=[0.6, 0.2, 0.2]),
    "no_density": rows(val=[0.7, 0.7], test=[0.7, 0.7], density=[None, 1.0]),
}


def frame():
    out = []
    for tid, ms in TRIALS.items():
        out += [{**m, "trial_id": tid} for m in ms]
    return pd.DataFrame(out).sample(frac=1.0, random_state=0)  # the row order decides nothing


@pytest.mark.parametrize("select", S.SELECTIONS)
def test_python_pandas_and_sql_name_the_same_winners(select):
    want = {tid: S.best_round(ms, select) for tid, ms in TRIALS.items()}
    want = {t: k for t, k in want.items() if k is not None}
    assert ("no_val" in want) == (select == "test")  # the frame's trials do cover a missing winner
    assert want["sparser"] == (2 if select == "val" else 3) and want["earlier"] == 1
    assert want["no_density"] == 1
    df = frame()
    got = S.winners_frame(df, select, ["trial_id"])
    assert dict(zip(got["trial_id"], got["round"])) == want
    results = df  # noqa: F841  (the table winners_sql names; duckdb finds the local frame)
    sql = duckdb.sql(S.winners_sql(select)).df()
    assert len(sql) == len(want) and dict(zip(sql["trial_id"], sql["round"])) == want
    # The SQL returns the whole row of the winner, not only its round.
    for r in sql.itertuples():
        src = next(m for m in TRIALS[r.trial_id] if m["round"] == r.round)
        assert math.isclose(getattr(r, f"{select}_acc"), src[f"{select}_acc"]) and r.density == src["density"]
