"""Per-round row files: what the driver appends as rounds commit, read with the
shards, folded in by compaction (orchestrator/results/rowfiles.py)."""
from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from orchestrator import results
from orchestrator.results import rowfiles
from tests.orchestrator.helpers import commit
from workers.store import FS, SweepStore


def _fp(autocast=None, dtype="float32", device="cuda"):
    return {"device": device, "dtype": dtype, "autocast": autocast, "channels_last": False, "fused": 1,
            "conv": "solo"}


def _sorted(table: pa.Table, kind: str) -> list[dict]:
    keys = ["trial_id", "round"] + (["layer"] if kind == "layers" else [])
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def _pending(store, kind="results"):
    folder = rowfiles.rows_dir(store, kind)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _no_duplicates(store):
    df = results.load_results(store)
    assert not df.duplicated(["trial_id", "round"]).any()
    layers = results.load_layers(store)
    assert not layers.duplicated(["trial_id", "round", "layer"]).any()
    return df


def _same_as_manifests(store):
    derived = results.Collector(store).tables()
    for kind in ("results", "layers"):
        assert _sorted(results.load_table(store, kind), kind) == _sorted(derived[kind], kind), kind


def test_appended_rows_equal_the_rebuilt_rows_exactly(store):
    bf16, fp32 = _fp("bfloat16"), _fp(device="cpu")
    c = results.Collector(store)
    plan = [("ab00000000000001", 0, bf16), ("ab00000000000001", 1, bf16), ("cd00000000000002", 0, None),
            ("ab00000000000001", 2, fp32),  # continued in another arithmetic: the lineage's cell changes
            ("cd00000000000002", 1, None), ("ab00000000000003", 0, fp32)]
    for tid, k, numerics in plan:
        commit(store, tid, k, **({"numerics": numerics} if numerics else {}))
        assert c.append_round(tid, k)
    assert c.appended == len(plan)
    assert results.shard_of("ab00000000000001") not in os.listdir(store.results_dir)  # nothing compacted yet
    _same_as_manifests(store)
    cells = set(results.load_results(store).query("trial_id == 'ab00000000000001'")["cell"])
    assert len(cells) == 1 and '"precision":"bf16+fp32"' in cells.pop().replace(" ", "")
    # A new driver process appends round 1 of a lineage whose round 0 is compacted.
    c.compact()
    commit(store, "ab00000000000003", 1, numerics=fp32)
    assert results.Collector(store).append_round("ab00000000000003", 1)
    _same_as_manifests(store)
    before = results.load_table(store, "results")
    results.Collector(store).compact()
    assert _pending(store) == [] and _pending(store, "layers") == []
    assert _sorted(results.load_table(store, "results"), "results") == _sorted(before, "results")


def test_a_round_that_is_not_committed_appends_nothing(store):
    c = results.Collector(store)
    assert not c.append_round("ab00000000000001", 0)
    assert _pending(store) == [] and c.appended == 0


def test_a_query_sees_pending_rows_and_shards_once_after_a_kill_before_compaction(store):
    tid = "ab00000000000001"
    for k in range(2):
        commit(store, tid, k)
    results.Collector(store).rebuild()
    c = results.Collector(store)  # the next run's driver, killed before compaction
    commit(store, tid, 2)
    c.append_round(tid, 2)
    commit(store, tid, 1, val=0.9)  # round 1 redone: its row file replaces the shard's row
    c.append_round(tid, 1)
    commit(store, "cd00000000000002", 0)
    c.append_round("cd00000000000002", 0)
    df = _no_duplicates(store).set_index(["trial_id", "round"])
    assert sorted(df.index) == [(tid, 0), (tid, 1), (tid, 2), ("cd00000000000002", 0)]
    assert df.loc[(tid, 1)].val_acc == 0.9
    _same_as_manifests(store)
    n = results.run_sql(store, "SELECT count(*) AS n, count(DISTINCT trial_id || '/' || round) AS k FROM results")
    assert n.n[0] == n.k[0] == 4
    layers = results.run_sql(store, "SELECT count(*) AS n FROM layers")
    assert layers.n[0] == 8
    # Plain readers of the folder see the shards alone: still one row per key.
    for kind in ("results", "layers"):
        plain = pd.read_parquet(store.path(kind))
        assert not plain.duplicated([c for c in ("trial_id", "round", "layer") if c in plain]).any()
        assert pads.dataset(store.path(kind)).to_table().num_rows == len(plain)


def _append_two_trials(store, c, tid: str, rounds: int) -> None:
    """`rounds` committed and appended rounds of `tid`, and round 0 of another trial."""
    for k in range(rounds):
        commit(store, tid, k)
        c.append_round(tid, k)
    commit(store, "cd00000000000002", 0)
    c.append_round("cd00000000000002", 0)


def test_compaction_is_idempotent_and_a_kill_before_deleting_leaves_no_duplicate(store, monkeypatch):
    tid, c = "ab00000000000001", results.Collector(store)
    _append_two_trials(store, c, tid, 3)

    def killed(*_):
        raise KeyboardInterrupt  # the shards are written, the row files are not deleted yet

    monkeypatch.setattr(results.Collector, "_delete_listed", killed)
    with pytest.raises(KeyboardInterrupt):
        results.Collector(store).compact()
    assert len(_pending(store)) == 4 and "part-ab.parquet" in os.listdir(store.results_dir)
    assert len(_no_duplicates(store)) == 4
    _same_as_manifests(store)
    with pytest.raises(KeyboardInterrupt):
        results.Collector(store).rebuild()
    assert len(_no_duplicates(store)) == 4
    monkeypatch.undo()
    assert results.Collector(store).compact() == 8  # 4 results + 4 layers row files
    assert _pending(store) == [] and _pending(store, "layers") == []
    first = results.load_table(store, "results")
    assert results.Collector(store).compact() == 0
    assert results.load_table(store, "results").equals(first)
    assert len(_no_duplicates(store)) == 4
    _same_as_manifests(store)


def test_a_row_file_of_an_invalidated_or_redone_round_never_survives_compaction(store):
    tid = "ab00000000000001"
    c = results.Collector(store)
    for k in range(3):
        commit(store, tid, k)
        c.append_round(tid, k)
    store.lineage(tid).invalidate_from(1)
    commit(store, tid, 1, val=0.77)  # redone, and the driver was killed before it appended it
    c.compact()
    df = _no_duplicates(store).set_index(["trial_id", "round"])
    assert sorted(df.index) == [(tid, 0), (tid, 1)] and df.loc[(tid, 1)].val_acc == 0.77
    assert sorted(results.load_layers(store)["round"]) == [0, 0, 1, 1]
    _same_as_manifests(store)
    # The same through a full rebuild (what `run` does at its start and end).
    commit(store, tid, 2)
    c.append_round(tid, 2)
    store.lineage(tid).invalidate_from(2)
    c.rebuild()
    assert sorted(results.load_results(store)["round"]) == [0, 1] and _pending(store) == []


def test_update_folds_in_the_row_files_of_its_trials(store):
    tid = "ab00000000000001"
    c = results.Collector(store)
    commit(store, tid, 0)
    c.append_round(tid, 0)
    commit(store, "cd00000000000002", 0)
    c.append_round("cd00000000000002", 0)
    c.update([tid])
    assert _pending(store) == ["cd00000000000002-r0.parquet"]
    assert len(_no_duplicates(store)) == 2


def _fill(store: SweepStore, n: int) -> None:
    """A compacted table of n trials of one round (written straight into the shards)."""
    commit(store, "ff00000000000000", 0)
    results.Collector(store).rebuild()
    row = results.load_table(store, "results").to_pylist()[0]
    rows = [{**row, "trial_id": f"{i % 255:02x}{i:014d}"} for i in range(n)]  # never in part-ff
    table = pa.Table.from_pylist(rows, schema=results.RESULTS_SCHEMA)
    for shard in {results.shard_of(r["trial_id"]) for r in rows}:
        part = table.filter(pa.compute.equal(pa.compute.utf8_slice_codeunits(table["trial_id"], 0, 2), shard[5:7]))
        store.fs.write(store.table_file("results", shard), rowfiles.encode(part, "results"))


def test_the_driver_s_storage_operations_per_round_do_not_grow_with_the_table(tmp_path):
    cost = {}
    for n in (10, 1000):
        store = SweepStore(str(tmp_path), f"s{n:04d}")
        _fill(store, n)
        tid = "0a99999999999999"
        commit(store, tid, 0)
        c = results.Collector(store)
        before = FS.counters()
        assert c.append_round(tid, 0)
        cost[n] = FS.counters(since=before)
        assert len(results.load_results(store)) == n + 2
    assert cost[10].keys() == cost[1000].keys() == {"read", "write", "bytes_read", "bytes_written"}
    assert cost[10]["read"] == cost[1000]["read"] == 1      # the round's manifest
    assert cost[10]["write"] == cost[1000]["write"] == 2    # its results row, its layers rows
    for key in ("bytes_read", "bytes_written"):
        assert cost[1000][key] == pytest.approx(cost[10][key], rel=0.01)


def test_fs_counts_operations_and_bytes(tmp_path):
    fs = FS(str(tmp_path))
    before = FS.counters()
    fs.write(fs.join("a/b.bin"), b"12345")
    assert fs.read(fs.join("a/b.bin")) == b"12345"
    fs.exists(fs.join("a"))
    fs.listdir(fs.join("a"))
    fs.move(fs.join("a/b.bin"), fs.join("a/c.bin"))
    fs.delete_file(fs.join("a/c.bin"))
    assert FS.counters(since=before) == {"write": 1, "read": 1, "exists": 1, "listdir": 1, "move": 1,
                                         "delete": 1, "bytes_written": 5, "bytes_read": 5}


def test_a_trial_s_evaluations_append_its_rows_once(store):
    from workers.evaluations.base import digests
    tid, c = "ab00000000000001", results.Collector(store)
    _append_two_trials(store, c, tid, 2)
    c.compact()
    lin = store.lineage(tid)
    rows = [{"round": k, "suite": "cifar10c", "corruption": "fog", "severity": s, "accuracy": 0.1 * k + 0.01 * s}
            for k in range(2) for s in (1, 2)]
    lin.write_analysis("robustness_cifar10c", {"rounds": digests(lin, [0, 1]), "rows": rows})
    c.append_trial(tid)
    assert _pending(store, "robustness") == [f"{tid}.parquet"]
    df = results.load_results(store).set_index(["trial_id", "round"])
    assert df.loc[(tid, 1)].acc_cifar10c == pytest.approx(0.115)
    derived = results.Collector(store).tables()
    for kind in ("results", "layers", "robustness"):
        assert _sorted(results.load_table(store, kind), kind) == _sorted(derived[kind], kind), kind
    c.compact()
    assert _pending(store, "robustness") == [] and len(results.load_table(store, "robustness")) == 4
