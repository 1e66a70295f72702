"""The tables people cite (orchestrator/tables.py, paired.py), on results rows
as the collector makes them from tiny committed lineages: the winning-ticket
rule under each selection protocol, grid cells, one set of lineages per row,
paired gains with their intervals and p-values, and an old sweep directory
read by the new rules."""
from __future__ import annotations

import base64
import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats as sps

from orchestrator import stats as ST
from orchestrator import tables as T
from orchestrator.cli import main
from orchestrator.results import Collector, ResultsError, load_results
from orchestrator import results as R
from tests.orchestrator.test_stats import hand_bootstrap, hand_power
from workers import selection as S
from workers.spec import DataSpec, ModelSpec, PruneSpec, TrialSpec
from workers.store import SweepStore


def digits(seed=0, rounds=1, **data):
    """A digits/resnet18 trial spec of `rounds` IMP rounds after the dense one."""
    return TrialSpec(DataSpec("digits", **{"fraction": 0.1, **data}), prune=PruneSpec(rounds=rounds), seed=seed)


def correct(n, right):
    """A bool array of n test images, True at the indices in `right`."""
    out = np.zeros(n, dtype=bool)
    out[list(right)] = True
    return out


def commit(st: SweepStore, spec: TrialSpec, rounds, val_per_class=50):
    """Commit the rounds of spec's lineage; each round is (val_acc, test) where
    test is a test accuracy (a round without per-image predictions, as older
    sweeps wrote) or a bool array of per-image correctness (its accuracy)."""
    lin = st.lineage(spec.trial_id)
    lin.write_spec(spec.to_dict())
    for k, (val, test) in enumerate(rounds):
        m = {"trial_id": spec.trial_id, "round": k, "density": 0.8 ** k, "val_acc": val,
             "val_per_class": val_per_class if val is not None else None, "layers": []}
        if isinstance(test, np.ndarray):
            m.update(test_acc=int(test.sum()) / len(test), test_images=len(test),
                     test_correct=base64.b64encode(np.packbits(test, bitorder="little").tobytes()).decode())
        else:
            m["test_acc"] = test
        lin.commit_round(k, {"metrics.json": b"{}"}, m, spec.to_dict())


def rows(st: SweepStore) -> pd.DataFrame:
    """The results rows, as the collector writes them."""
    Collector(st).rebuild()
    df = load_results(st)
    assert {"cell", "cell_id", "lineage_rounds", "test_correct", "test_images", "precision"} <= set(df)
    return df


@pytest.fixture
def st(tmp_path):
    return SweepStore(str(tmp_path / "runs"), "s")


def test_val_and_test_selection_disagree_and_each_rule_picks_its_winner(st):
    # t1: val says round 1, test says round 2. t2: a val tie between rounds 1 and 2 -> the sparser (2).
    t1, t2 = digits(0, rounds=2), digits(1, rounds=2)
    commit(st, t1, [(0.50, 0.40), (0.70, 0.60), (0.60, 0.65)])
    commit(st, t2, [(0.50, 0.70), (0.70, 0.60), (0.70, 0.62)])
    df = rows(st)
    val = T.winning_tickets(df, "val").set_index("trial_id")
    test = T.winning_tickets(df, "test").set_index("trial_id")
    assert val.loc[t1.trial_id, "round"] == 1 and val.loc[t2.trial_id, "round"] == 2
    assert test.loc[t1.trial_id, "round"] == 2 and test.loc[t2.trial_id, "round"] == 0  # dense wins on test
    assert set(val["selection"]) == {"val"} and set(test["selection"]) == {"test"}
    assert T.winning_tickets(pa.Table.from_pandas(df), "test").shape[0] == 2
    # The Python form of the rule (evaluations) agrees with the SQL form (queries).
    for tid in (t1.trial_id, t2.trial_id):
        recs = df[df.trial_id == tid].to_dict("records")
        assert S.best_round(recs, "val") == val.loc[tid, "round"]
        assert S.best_round(recs, "test") == test.loc[tid, "round"]
    # ... and the pandas form (the report's seed-mean curves)
    w = S.winners_frame(df, "test", ["trial_id"]).set_index("trial_id")["round"]
    assert w.to_dict() == {t1.trial_id: 2, t2.trial_id: 0}
    # Under test selection the gain cannot be negative; under val it can.
    assert (T.compare(df, "test", ci="t")["gain"] >= 0).all()
    assert T.compare(df, "val", ci="t")["gain"].iloc[0] == pytest.approx(((0.60 - 0.40) + (0.62 - 0.70)) / 2)


def test_paired_t_interval_by_hand(st):
    # Three seeds of one cell: paired gains 0.20, 0.14, 0.05.
    for seed, (dense, ticket) in enumerate([(0.40, 0.60), (0.50, 0.64), (0.45, 0.50)]):
        commit(st, digits(seed), [(0.5, dense), (0.9, ticket)])
    # One seed of another cell: no t interval at all.
    commit(st, digits(0, fraction=None, images_per_class=10), [(0.9, 0.30), (0.1, 0.20)])
    out = T.compare(rows(st), "val", ci="t")
    a = out[out.fraction == 0.1].iloc[0]
    d = [0.20, 0.14, 0.05]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2), from a table
    assert a.n_seeds == 3 and a.gain == pytest.approx(mean) and a.ci_method == "t over seeds"
    assert a.gain_ci_low == pytest.approx(mean - half) and a.gain_ci_high == pytest.approx(mean + half)
    assert a.dense_test_acc == pytest.approx(0.45) and a.ticket_test_acc == pytest.approx(0.58)
    assert a.p_value == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue)  # the paired t-test
    assert a.prob_ticket_better == 1.0
    b = out[out.images_per_class == 10].iloc[0]
    assert b.n_seeds == 1 and b.gain == pytest.approx(0.0) and b.ticket_density == 1.0
    assert pd.isna(b.gain_ci_low) and pd.isna(b.gain_ci_high) and pd.isna(b.p_value)
    assert b.prob_ticket_better == 0.5  # a tie counts half
    assert "cells with one seed have no t interval; add seeds for one" in T.notes(out, "val")
    # Equal gains in every seed: the t interval would be [m, m]; there is none.
    assert T.t_interval(0.1, 0.0, 1) == (None, None) and T.t_interval(0.1, 0.0, 3) == (None, None)
    assert math.isnan(ST.t_test(0.1, 0.0, 3))


def test_cells_that_differ_only_in_imbalance_or_width_are_separate_rows(st):
    for b in (0.1, 0.01):
        for s in (0, 1):
            commit(st, TrialSpec(DataSpec("cifar100_lt", fraction=1.0, imbalance=b), seed=s, prune=PruneSpec(rounds=1)),
                   [(0.5, 0.5), (0.6, 0.55)])
    for w in (0.25, 0.5):
        commit(st, TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=w), prune=PruneSpec(rounds=1)),
               [(0.5, 0.5), (0.6, 0.56)])
    out = T.compare(rows(st), "val", ci="t")
    lt = out[out.dataset == "cifar100_lt"]
    assert len(lt) == 2 and sorted(lt["imbalance"]) == [0.01, 0.1] and (lt["n_seeds"] == 2).all()
    wide = out[out.dataset == "digits"]
    assert len(wide) == 2 and sorted(wide["width"]) == [0.25, 0.5] and (wide["n_seeds"] == 1).all()
    # Seeds of one cell share it; nothing but the seed is ignored.
    assert digits(3).cell_id == digits(0).cell_id


def test_lineages_that_differ_in_any_spec_field_are_never_merged(st):
    # The same shown columns, epochs and rewind epoch apart: three cells, never one.
    from workers.spec import TrainSpec
    for epochs, rewind in ((4, 1), (8, 1), (4, 2)):
        spec = TrialSpec(DataSpec("digits", fraction=0.1), train=TrainSpec(epochs=epochs),
                         prune=PruneSpec(rounds=1, rewind_epoch=rewind))
        commit(st, spec, [(0.5, 0.5), (0.6, 0.5 + epochs / 100)])
    out = T.compare(rows(st), "val", ci="t")
    assert len(out) == 3 and (out["n_seeds"] == 1).all()
    assert sorted(zip(out["epochs"], out["rewind_epoch"])) == [(4, 1), (4, 2), (8, 1)]


def test_a_frame_without_cell_columns_is_refused_in_one_line(st):
    commit(st, digits(0), [(0.5, 0.5), (0.6, 0.6)])
    df = rows(st)
    for drop in ("cell", "cell_id", "lineage_rounds"):
        with pytest.raises(ResultsError) as e:
            T.compare(df.drop(columns=[drop]))
        assert drop in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ResultsError):
        T.protocol_line("val", df.drop(columns=["cell_id"]))


def test_every_number_of_a_row_comes_from_the_same_lineages(st):
    n = 40
    # Cell a: seeds 0 and 1 paired; seed 2 finished without a held-out split (no val ticket);
    # seed 3 unfinished. Its dense accuracy (0.9) would pull dense_test_acc up if counted.
    commit(st, digits(0, rounds=2), [(0.5, correct(n, range(20))), (0.8, correct(n, range(26))),
                                     (0.6, correct(n, range(10)))])
    commit(st, digits(1, rounds=2), [(0.5, correct(n, range(22))), (0.7, correct(n, range(2, 23))),
                                     (0.9, correct(n, range(30)))])
    commit(st, digits(2, rounds=2), [(None, correct(n, range(36))), (None, correct(n, range(10))),
                                     (None, correct(n, range(12)))], val_per_class=None)
    commit(st, digits(3, rounds=2), [(0.5, correct(n, range(39)))])
    # Cell b: two seeds, both paired.
    for seed, (d, t) in enumerate([(10, 14), (12, 12)]):
        commit(st, digits(seed, fraction=0.2, rounds=1), [(0.4, correct(n, range(d))), (0.6, correct(n, range(t)))])
    df = rows(st)
    for select in ("val", "test"):
        for ci in ("bootstrap", "t"):
            out = T.compare(df, select, ci=ci)
            assert ((out["ticket_test_acc"] - out["dense_test_acc"] - out["gain"]).abs() < 1e-12).all()
            a = out[out.fraction == 0.1].iloc[0]
            assert a.n_unfinished == 1
            if select == "val":
                assert (a.n_seeds, a.n_no_ticket) == (2, 1)
                assert a.dense_test_acc == pytest.approx((20 + 22) / 2 / n)  # seeds 0 and 1 only
                assert a.ticket_test_acc == pytest.approx((26 + 30) / 2 / n)
                assert a.dense_test_std == pytest.approx(np.std([20 / n, 22 / n], ddof=1))
            else:
                assert (a.n_seeds, a.n_no_ticket) == (3, 0)
    notes = T.notes(T.compare(df, "val"), "val")
    assert any("1 finished lineage(s) without a dense round or a winning ticket" in x for x in notes)
    assert any("1 unfinished lineage(s) are not counted" in x for x in notes)


def test_equal_gains_with_different_images_get_an_interval_identical_images_a_zero_width_one(st):
    n = 50
    # Cell a: the paired gain is +0.04 in all three seeds (the t interval has no spread),
    # but each ticket gets other images right: the test split's own noise.
    for seed in range(3):
        dense = correct(n, range(seed, seed + 30))
        ticket = correct(n, [*range(seed + 5, seed + 30), *range(40, 47)])
        commit(st, digits(seed), [(0.5, dense), (0.7, ticket)])
    # Cell b: the ticket is right on exactly the dense network's images in every seed.
    for seed in range(3):
        same = correct(n, range(10 + seed, 40))
        commit(st, digits(seed, fraction=0.2), [(0.5, same), (0.7, same)])
    df = rows(st)
    out = T.compare(df, "val")
    a, b = out[out.fraction == 0.1].iloc[0], out[out.fraction == 0.2].iloc[0]
    assert a.gain == pytest.approx(0.04) and a.ci_method == "bootstrap seeds+images"
    assert a.gain_ci_low < 0.04 < a.gain_ci_high
    assert (b.gain, b.gain_ci_low, b.gain_ci_high, b.p_value) == (0.0, 0.0, 0.0, 1.0)
    notes = T.notes(out, "val")
    assert any("1 cell(s) have a zero-width interval: their dense network and winning ticket are right on exactly "
               "the same test images in every seed" in x for x in notes)
    # The seed-level t interval of the same cells: none (no spread), and a note says why.
    t = T.compare(df, "val", ci="t")
    assert t["gain_ci_low"].isna().all() and any("same paired gain in every seed" in x for x in T.notes(t, "val"))
    # Seeded: two calls, identical intervals.
    again = T.compare(df, "val")
    pd.testing.assert_frame_equal(out, again)


def test_the_bootstrap_of_a_cell_is_the_documented_draws(st):
    n = 30
    seeds = [(range(0, 18), range(3, 22)), (range(5, 20), range(0, 14)), (range(0, 25), range(0, 25))]
    for seed, (d, t) in enumerate(seeds):
        commit(st, digits(seed), [(0.5, correct(n, d)), (0.6, correct(n, t))])
    df = rows(st)
    row = T.compare(df, "val").iloc[0]
    diffs = [correct(n, t).astype(int) - correct(n, d).astype(int) for d, t in seeds]
    order = df.drop_duplicates("trial_id").sort_values("trial_id")["seed"].tolist()  # the docstring's seed order
    diffs = [diffs[s] for s in order]
    low, high, p = hand_bootstrap(diffs, row.cell_id, ST.BOOTSTRAP_B)
    assert (row.gain_ci_low, row.gain_ci_high, row.p_value) == (pytest.approx(low, abs=1e-12),
                                                               pytest.approx(high, abs=1e-12), pytest.approx(p))
    assert row.p_holm == pytest.approx(p)  # a family of one
    # Bits that do not reproduce a round's test_acc are not its rounds': the t interval, labelled.
    damaged = df.assign(test_acc=df["test_acc"] + np.where(df["round"] == 1, 0.01, 0.0))
    assert T.compare(damaged, "val").iloc[0].ci_method == "t over seeds (per-image predictions disagree with test_acc)"


def test_one_seed_gets_an_image_level_interval_and_no_claim_and_p_holm_is_holm_over_the_seeded_rows(st):
    n = 100
    # Four one-seed cells whose tickets win on 2, 6, 10 and 15 more images than they lose...
    for i, extra in enumerate((2, 6, 10, 15)):
        commit(st, digits(0, images_per_class=5 + i, fraction=None),
               [(0.5, correct(n, range(50))), (0.6, correct(n, [*range(3, 50), *range(60, 63 + extra)]))])
    # ...and four two-seed cells, the Holm family.
    for i, extra in enumerate((2, 6, 10, 15)):
        for seed in (0, 1):
            commit(st, digits(seed, images_per_class=20 + i, fraction=None),
                   [(0.5, correct(n, range(50))),
                    (0.6, correct(n, [*range(3 + seed, 50), *range(60, 63 + extra + 2 * seed)]))])
    out = T.compare(rows(st), "val")
    one = out[out["n_seeds"] == 1]
    assert len(one) == 4 and (one["ci_method"] == "bootstrap images (1 seed)").all()
    assert (one["gain_ci_low"] < one["gain_ci_high"]).all() and one["p_value"].notna().all()
    assert one["p_value"].min() < 0.05  # the test images alone would call it significant...
    assert one["p_holm"].isna().all()   # ...but one trained network is no evidence of an effect
    two = out[out["n_seeds"] == 2]
    p = two["p_value"].to_numpy()
    order = np.argsort(p)
    hand = np.empty(4)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * p[i]))
        hand[i] = running
    assert two["p_holm"].to_numpy(dtype=float) == pytest.approx(hand)
    assert (two["p_holm"] >= two["p_value"]).all()
    assert any("image-level interval only" in x for x in T.notes(out, "val"))
    assert "Holm-adjusted over the 4 row(s) of this table" in T.family(out)
    few = int((out["n_seeds"] < 2).sum())
    assert few and f"{few} of its {len(out)} cell(s) make no claim for lack of seeds" in T.family(out)
    assert "Holm-adjusted over the 0 row(s)" in T.family(out[out["n_seeds"] == 1])


def test_power_matches_a_hand_computation_of_the_paired_t_test(st):
    # Four seeds of one cell: paired gains 0.02, 0.05, -0.01, 0.04.
    gains = [0.02, 0.05, -0.01, 0.04]
    for seed, g in enumerate(gains):
        commit(st, digits(seed), [(0.5, 0.50), (0.6, 0.50 + g)])
    row = T.power(rows(st), "val", effect=0.03).iloc[0]
    sd = np.std(gains, ddof=1)
    assert row.n_seeds == 4 and row.gain_sd == pytest.approx(sd)
    assert hand_power(row.min_detectable_gain, sd, 4) == pytest.approx(0.80, abs=1e-6)
    assert row.power_for_effect == pytest.approx(hand_power(0.03, sd, 4), abs=1e-6)
    n = int(row.seeds_for_effect)
    assert hand_power(0.03, sd, n - 1) < 0.80 <= hand_power(0.03, sd, n)
    with pytest.raises(ResultsError):
        T.power(rows(st), "val", effect=0)


def test_unfinished_lineages_and_missing_validation(st):
    commit(st, digits(0), [(0.5, 0.5)])  # still running: round 0 of 0-1
    commit(st, digits(1), [(0.5, 0.5), (0.6, 0.55)])
    out = T.compare(rows(st), "val")
    assert out["n_seeds"].tolist() == [1] and out["n_unfinished"].tolist() == [1]
    assert any("unfinished" in x for x in T.notes(out, "val"))


def test_no_held_out_images_means_no_val_ticket(st):
    # fraction 1.0: no held-out images, so val selection has no winner; test does.
    commit(st, TrialSpec(DataSpec("digits", fraction=1.0), prune=PruneSpec(rounds=1)),
           [(None, 0.5), (None, 0.56)], val_per_class=None)
    df = rows(st)
    val, test = T.compare(df, "val"), T.compare(df, "test")
    assert val["n_seeds"].tolist() == [0] and val["n_no_ticket"].tolist() == [1]
    assert val[["dense_test_acc", "ticket_test_acc", "gain"]].isna().all(axis=None)  # the same (empty) set
    assert test["n_seeds"].tolist() == [1] and test["gain"].iloc[0] == pytest.approx(0.06)
    assert any("no held-out validation images" in x for x in T.notes(val, "val"))


def test_protocols_side_by_side_with_the_selection_bias_over_shared_lineages(st):
    commit(st, digits(0, rounds=2), [(0.50, 0.40), (0.70, 0.60), (0.60, 0.65)])
    # Seed 1 was evaluated without a held-out split: a ticket under test only.
    commit(st, digits(1, rounds=2), [(None, 0.40), (None, 0.50), (None, 0.70)], val_per_class=None)
    p = T.protocols(rows(st), ci="t").iloc[0]
    assert p.gain_val == pytest.approx(0.20) and p.gain_test == pytest.approx((0.25 + 0.30) / 2)
    assert (p.n_seeds_val, p.n_seeds_test, p.n_seeds_both) == (1, 2, 1)
    assert p.selection_bias == pytest.approx(0.05)  # seed 0's, not 0.275 - 0.20


def _legacy_sweep(root) -> SweepStore:
    """Storage as lth-sweep wrote it before: spec sections `selection`, shards of
    schema 2 with a `selection` column, test-selected trials whose val_acc is the
    test accuracy, val-selected trials holding out 10% per class, no per-image
    predictions."""
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
    old = pa.table({"sweep": ["old"], "trial_id": ["aa00000000000000"], "selection": ["test"],
                    "round": pa.array([0], pa.int64()), "val_acc": [0.4], "test_acc": [0.4],
                    "schema_version": pa.array([2], pa.int32())})
    import os
    os.makedirs(st.results_dir)
    pq.write_table(old.replace_schema_metadata({b"lth_sweep.table": b"results", b"lth_sweep.schema_version": b"2"}),
                   os.path.join(st.results_dir, "part-aa.parquet"))
    return st


def test_an_old_sweep_reads_under_both_protocols(tmp_path, capsys):
    st = _legacy_sweep(tmp_path)
    data = R.results_dataset(st)  # old shards: derived again from the manifests, in memory
    df = R.to_pandas(data)
    old_test = df[df.trial_id.str.startswith("a")]
    assert old_test["val_acc"].isna().all()  # it was the test accuracy, not a held-out one
    assert df[df.trial_id == "ba00000000000000"]["val_acc"].notna().all()
    assert df["cell_id"].notna().all() and (df["lineage_rounds"] == 2).all()
    # The old test-selected trials stay a cell of their own, never seeds of the val one.
    assert df.drop_duplicates("trial_id").groupby("cell_id").size().sort_values().tolist() == [1, 2]
    val = T.compare(data, "val").set_index("n_seeds")
    assert val.loc[1, "gain"] == pytest.approx(0.08)  # the val trial: round 1 by held-out accuracy
    assert pd.isna(val.loc[0, "gain"])  # old test-selected trials: no held-out images
    test = T.compare(data, "test").set_index("n_seeds")
    assert test.loc[2, "gain"] == pytest.approx((0.15 + 0.02) / 2)
    # No per-image predictions: the seed-level t interval, labelled.
    assert test.loc[2, "ci_method"] == "t over seeds (no per-image predictions)"
    assert test.loc[2, "p_value"] == pytest.approx(sps.ttest_1samp([0.15, 0.02], 0.0).pvalue)
    assert any("without per-image predictions" in x for x in T.notes(test.reset_index(), "test"))
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


def test_compare_counts_rounds_fused_and_those_that_fell_back_by_reason(st):
    """A cell whose lineages trained fused shows how many rounds fused and how
    many members fell back, and why (workers/group.py records it in numerics);
    a table without fusion keeps its columns."""
    plain = digits(0)
    commit(st, plain, [(0.5, 0.5), (0.6, 0.55)])
    assert not set(T.FUSION_COLUMNS) & set(T.compare(rows(st), "val").columns)
    a, b = digits(1), digits(2)
    for spec, other, why in ((a, b, None), (b, a, "check failed")):
        lin = st.lineage(spec.trial_id)
        lin.write_spec(spec.to_dict())
        for k in range(2):
            m = {"trial_id": spec.trial_id, "round": k, "density": 0.8 ** k, "val_acc": 0.5 + 0.1 * k,
                 "val_per_class": 50, "layers": [], "test_acc": 0.5,
                 "numerics": {"fused": 1 if (why and k) else 2, **({"fallback": why} if why and k else {})},
                 **({} if (why and k) else {"fused_with": [other.trial_id]})}
            lin.commit_round(k, {"metrics.json": b"{}"}, m, spec.to_dict())
    out = T.compare(rows(st), "val")
    assert len(out) == 1 and out["n_seeds"].iloc[0] == 3 and set(T.FUSION_COLUMNS) <= set(out.columns)
    assert out["rounds_fused"].iloc[0] == 3 and out["rounds_fallback"].iloc[0] == "1 check failed"
