"""The tables people cite (orchestrator/tables.py): the winning-ticket rule under
each selection protocol, grid cells, paired gains with their interval, and an
old sweep directory read by the new rules."""
from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow as pa
import pytest

from orchestrator import results as R
from orchestrator import tables as T
from orchestrator.cli import main
from workers import selection as S
from workers.spec import DataSpec, ModelSpec, TrialSpec
from workers.store import SweepStore

COLS = ["trial_id", "dataset", "fraction", "images_per_class", "augmentation", "method",
        "arch", "seed", "round", "density", "val_acc", "test_acc"]


def frame(rows, **cols):
    df = pd.DataFrame([dict(zip(COLS, r)) for r in rows])
    for k, v in cols.items():
        df[k] = v
    return df


def test_val_and_test_selection_disagree_and_each_rule_picks_its_winner():
    # t1: val says round 1, test says round 2. t2: a val tie between rounds 1 and 2 -> the sparser (2).
    df = frame([
        ("t1", "c", 0.1, None, "none", "imp", "r", 0, 0, 1.00, 0.50, 0.40),
        ("t1", "c", 0.1, None, "none", "imp", "r", 0, 1, 0.80, 0.70, 0.60),
        ("t1", "c", 0.1, None, "none", "imp", "r", 0, 2, 0.64, 0.60, 0.65),
        ("t2", "c", 0.1, None, "none", "imp", "r", 1, 0, 1.00, 0.50, 0.70),
        ("t2", "c", 0.1, None, "none", "imp", "r", 1, 1, 0.80, 0.70, 0.60),
        ("t2", "c", 0.1, None, "none", "imp", "r", 1, 2, 0.64, 0.70, 0.62),
    ])
    val = T.winning_tickets(df, "val").set_index("trial_id")
    test = T.winning_tickets(df, "test").set_index("trial_id")
    assert val.loc["t1", "round"] == 1 and val.loc["t2", "round"] == 2
    assert test.loc["t1", "round"] == 2 and test.loc["t2", "round"] == 0  # the dense net wins on test
    assert set(val["selection"]) == {"val"} and set(test["selection"]) == {"test"}
    assert T.winning_tickets(pa.Table.from_pandas(df), "test").shape[0] == 2
    # The Python form of the rule (evaluations) agrees with the SQL form (queries).
    for tid in ("t1", "t2"):
        rounds = df[df.trial_id == tid].to_dict("records")
        assert S.best_round(rounds, "val") == val.loc[tid, "round"]
        assert S.best_round(rounds, "test") == test.loc[tid, "round"]
    # ... and the pandas form (the report's seed-mean curves)
    w = S.winners_frame(df, "test", ["trial_id"]).set_index("trial_id")["round"]
    assert w.to_dict() == {"t1": 2, "t2": 0}
    # Under test selection the gain cannot be negative; under val it can.
    assert (T.compare(df, "test")["gain"] >= 0).all()
    assert T.compare(df, "val")["gain"].iloc[0] == pytest.approx(((0.60 - 0.40) + (0.62 - 0.70)) / 2)


def test_paired_interval_by_hand():
    # Three seeds of one cell: paired gains 0.20, 0.14, 0.05.
    rows = []
    for seed, (dense, ticket) in enumerate([(0.40, 0.60), (0.50, 0.64), (0.45, 0.50)]):
        rows += [(f"a{seed}", "c", 0.1, None, "none", "imp", "r", seed, 0, 1.0, 0.5, dense),
                 (f"a{seed}", "c", 0.1, None, "none", "imp", "r", seed, 1, 0.8, 0.9, ticket)]
    # One seed of another cell: no interval at all (never a zero-width one).
    rows += [("b0", "c", None, 10, "none", "imp", "r", 0, 0, 1.0, 0.9, 0.30),
             ("b0", "c", None, 10, "none", "imp", "r", 0, 1, 0.8, 0.1, 0.20)]
    out = T.compare(frame(rows), "val")
    a = out[out.fraction == 0.1].iloc[0]
    d = [0.20, 0.14, 0.05]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2), from a table
    assert a.n_seeds == 3 and a.gain == pytest.approx(mean)
    assert a.gain_ci_low == pytest.approx(mean - half) and a.gain_ci_high == pytest.approx(mean + half)
    assert a.dense_test_acc == pytest.approx(0.45) and a.ticket_test_acc == pytest.approx(0.58)
    b = out[out.images_per_class == 10].iloc[0]
    assert b.n_seeds == 1 and b.gain == pytest.approx(0.0) and b.ticket_density == 1.0
    assert pd.isna(b.gain_ci_low) and pd.isna(b.gain_ci_high)
    assert T.t_interval(0.1, 0.0, 1) == (None, None)


def _cells(*specs):
    """Result rows (as the collector writes them) of two rounds per spec."""
    rows = []
    for i, spec in enumerate(specs):
        tid = spec.trial_id
        for k, (val, test) in enumerate([(0.5, 0.5), (0.6, 0.55 + i / 100)]):
            rows.append({"trial_id": tid, "dataset": spec.data.dataset, "fraction": spec.data.fraction,
                         "images_per_class": None, "augmentation": "none", "method": "imp",
                         "arch": spec.model.arch, "seed": spec.seed, "round": k, "density": 0.8 ** k,
                         "val_acc": val, "test_acc": test, "imbalance": spec.data.imbalance,
                         "cell": spec.cell_json(), "cell_id": spec.cell_id, "lineage_rounds": 2,
                         "val_per_class": 50})
    return pd.DataFrame(rows)


def test_cells_that_differ_only_in_imbalance_or_width_are_separate_rows():
    lt = [TrialSpec(DataSpec("cifar100_lt", fraction=1.0, imbalance=b), seed=s) for b in (0.1, 0.01) for s in (0, 1)]
    out = T.compare(_cells(*lt), "val")
    assert len(out) == 2 and sorted(out["imbalance"]) == [0.01, 0.1] and (out["n_seeds"] == 2).all()
    wide = [TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=w)) for w in (0.25, 0.5)]
    out = T.compare(_cells(*wide), "val")
    assert len(out) == 2 and sorted(out["width"]) == [0.25, 0.5] and (out["n_seeds"] == 1).all()
    # Seeds of one cell share it; nothing but the seed is ignored.
    assert TrialSpec(DataSpec("digits", fraction=0.1), seed=3).cell_id == \
        TrialSpec(DataSpec("digits", fraction=0.1)).cell_id


def test_unfinished_lineages_and_missing_validation():
    df = _cells(TrialSpec(DataSpec("digits", fraction=0.1)), TrialSpec(DataSpec("digits", fraction=0.1), seed=1))
    df.loc[df.trial_id == df.trial_id.iloc[0], "lineage_rounds"] = 5  # still running
    out = T.compare(df, "val")
    assert out["n_seeds"].tolist() == [1] and out["n_unfinished"].tolist() == [1]
    assert any("unfinished" in n for n in T.notes(out, "val"))
    # fraction 1.0: no held-out images, so val selection has no winner; test does.
    full = _cells(TrialSpec(DataSpec("digits", fraction=1.0)))
    full["val_acc"], full["val_per_class"] = None, None
    val, test = T.compare(full, "val"), T.compare(full, "test")
    assert val["n_seeds"].tolist() == [0] and val[["ticket_test_acc", "gain"]].isna().all(axis=None)
    assert val["dense_test_acc"].notna().all() and test["n_seeds"].tolist() == [1]
    assert any("no held-out validation images" in n for n in T.notes(val, "val"))


def test_protocols_side_by_side_with_the_selection_bias():
    df = frame([
        ("t1", "c", 0.1, None, "none", "imp", "r", 0, 0, 1.00, 0.50, 0.40),
        ("t1", "c", 0.1, None, "none", "imp", "r", 0, 1, 0.80, 0.70, 0.60),
        ("t1", "c", 0.1, None, "none", "imp", "r", 0, 2, 0.64, 0.60, 0.65),
    ])
    p = T.protocols(df).iloc[0]
    assert p.gain_val == pytest.approx(0.20) and p.gain_test == pytest.approx(0.25)
    assert p.selection_bias == pytest.approx(0.05)


def _legacy_sweep(root) -> SweepStore:
    """Storage as lth-sweep wrote it before: spec sections `selection`, shards of
    schema 2 with a `selection` column, test-selected trials whose val_acc is the
    test accuracy, val-selected trials holding out 10% per class."""
    st = SweepStore(str(root), "old")
    for tid, sel, seed, accs in (("aa00000000000000", "test", 0, [(0.40, 0.40), (0.55, 0.55)]),
                                 ("ab00000000000000", "test", 1, [(0.50, 0.50), (0.52, 0.52)]),
                                 ("ba00000000000000", "val", 0, [(0.30, 0.42), (0.60, 0.50)])):
        spec = {"data": {"dataset": "digits", "fraction": 0.1, "images_per_class": None, "augmentation": "none",
                         "imbalance": None},
                "model": {"arch": "resnet18", "width": 1.0, "init": "random"},
                "prune": {"method": "imp", "rounds": 1, "rate": 0.2, "rewind_epoch": 2, "prunable": "conv"},
                "selection": {"selection": sel, "val_fraction": 0.1}, "seed": seed}
        st.lineage(tid).write_spec(spec)
        for k, (val, test) in enumerate(accs):
            st.lineage(tid).commit_round(k, {"metrics.json": b"{}"}, {
                "trial_id": tid, "round": k, "density": 0.8 ** k, "val_acc": val, "test_acc": test,
                "layers": []}, spec)
    # A schema-2 shard, as the old collector wrote it (only some columns matter here).
    import pyarrow.parquet as pq
    rows = pa.table({"sweep": ["old"], "trial_id": ["aa00000000000000"], "selection": ["test"],
                     "round": pa.array([0], pa.int64()), "val_acc": [0.4], "test_acc": [0.4],
                     "schema_version": pa.array([2], pa.int32())})
    import os
    os.makedirs(st.results_dir)
    pq.write_table(rows.replace_schema_metadata({b"lth_sweep.table": b"results", b"lth_sweep.schema_version": b"2"}),
                   os.path.join(st.results_dir, "part-aa.parquet"))
    return st


def test_an_old_sweep_reads_under_both_protocols(tmp_path, capsys):
    st = _legacy_sweep(tmp_path)
    rows = R.results_dataset(st)  # old shards: derived again from the manifests, in memory
    df = R.to_pandas(rows)
    old_test = df[df.trial_id.str.startswith("a")]
    assert old_test["val_acc"].isna().all()  # it was the test accuracy, not a held-out one
    assert df[df.trial_id == "ba00000000000000"]["val_acc"].notna().all()
    assert df["cell_id"].notna().all() and (df["lineage_rounds"] == 2).all()
    # The old test-selected trials stay a cell of their own, never seeds of the val one.
    assert df.drop_duplicates("trial_id").groupby("cell_id").size().sort_values().tolist() == [1, 2]
    val = T.compare(rows, "val").set_index("n_seeds")
    assert val.loc[1, "gain"] == pytest.approx(0.08)  # the val trial: round 1 by held-out accuracy
    assert pd.isna(val.loc[0, "gain"])  # old test-selected trials: no held-out images
    test = T.compare(rows, "test").set_index("n_seeds")
    assert test.loc[2, "gain"] == pytest.approx((0.15 + 0.02) / 2)
    assert "legacy_selection" in test.columns
    for select in ("val", "test"):
        assert main(["query", "--compare", "--select", select, "--storage", str(tmp_path), "--name", "old",
                     "--format", "json"]) == 0
        out = capsys.readouterr()
        assert len(json.loads(out.out)) == 2 and "selection on" in out.err
    assert main(["report", "old", "--storage", str(tmp_path), "--out", str(tmp_path / "rep"),
                 "--select", "test"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "the paper's protocol" in md


def test_unknown_selection_is_one_line(tmp_path, capsys):
    _legacy_sweep(tmp_path)
    assert main(["query", "--compare", "--select", "best", "--storage", str(tmp_path), "--name", "old"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
