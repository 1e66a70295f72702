"""A run's start at any sweep size: each lineage's committed pointer (workers/store.py)
instead of every manifest, and the table checked against the pointers (Collector.sync),
with what is read growing with the lineages, not their rounds."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest

from orchestrator import results
from orchestrator.results import rowfiles
from orchestrator.verify import format_verify, redo_corrupt, verify_sweep
from tests.orchestrator.helpers import commit
from workers.store import FS, SweepStore

A, B = "ab00000000000001", "cd00000000000002"


def _digests(store, tid):
    return {k: m["manifest_sha256"] for k, m in store.lineage(tid).manifests().items()}


def _core(out: dict) -> dict:
    return {k: out[k] for k in ("folded", "derived", "shards")}


def _same_as_manifests(store):
    derived = results.Collector(store).tables()
    for kind in ("results", "layers"):
        got = results.load_table(store, kind).sort_by([("trial_id", "ascending"), ("round", "ascending")])
        want = derived[kind].sort_by([("trial_id", "ascending"), ("round", "ascending")])
        assert got.to_pylist() == want.to_pylist(), kind


def test_the_pointer_follows_every_commit_and_un_commit(store):
    lin = store.lineage(A)
    assert lin.read_pointer() is None
    for k in range(3):
        commit(store, A, k)
        assert lin.read_pointer() == {"prefix": k + 1, "rounds": _digests(store, A)}
    lin.invalidate_from(1)
    assert lin.read_pointer() == {"prefix": 1, "rounds": _digests(store, A)} and len(_digests(store, A)) == 1
    commit(store, A, 1, val=0.77)  # redone: another manifest, another digest
    assert lin.read_pointer() == {"prefix": 2, "rounds": _digests(store, A)}


def test_a_pointer_left_behind_or_missing_is_made_good_from_the_manifests(store):
    lin = store.lineage(A)
    for k in range(2):
        commit(store, A, k)
    # A kill between round 1's manifest and its pointer: the pointer says round 0 only.
    stale = {"prefix": 1, "rounds": {"0": _digests(store, A)[0]}}
    lin.write_marker(lin.POINTER, stale)
    commit(store, A, 2)  # the next commit does not trust a pointer with a hole
    assert lin.read_pointer() == {"prefix": 3, "rounds": _digests(store, A)}
    # A lineage committed before pointers existed: read from its manifests once, pointer written.
    os.remove(f"{lin.dir}/{lin.POINTER}")
    assert store.pointers([A, B]) == {A: {"prefix": 3, "rounds": _digests(store, A)}, B: {"prefix": 0, "rounds": {}}}
    assert lin.read_pointer()["prefix"] == 3 and not os.path.exists(f"{store.lineage(B).dir}/{lin.POINTER}")


def test_verify_names_a_pointer_that_disagrees_and_run_verify_rewrites_it(store, capsys):
    lin = store.lineage(A)
    for k in range(2):
        commit(store, A, k)
    assert verify_sweep(store)["stale"] == []
    lin.write_marker(lin.POINTER, {"prefix": 5, "rounds": {str(k): "x" for k in range(5)}})
    out = verify_sweep(store)
    assert [s["trial_id"] for s in out["stale"]] == [A] and out["corrupt"] == []
    assert f"{A} pointer: stale" in format_verify(out)
    assert redo_corrupt(store) == []
    assert lin.read_pointer() == {"prefix": 2, "rounds": _digests(store, A)}
    assert verify_sweep(store)["stale"] == []


def test_sync_derives_only_the_trials_whose_rows_disagree_with_their_pointers(store):
    c = results.Collector(store)
    for tid in (A, B):
        for k in range(3):
            commit(store, tid, k)
            c.append_round(tid, k)
    c.compact()
    _same_as_manifests(store)
    # A kill between round 3's commit and its row: no row file, the pointer says 4 rounds.
    commit(store, A, 3)
    # B's round 2 redone by a worker (a corrupt file found on resume) while no driver appended it:
    # the shard's row is of the old manifest, the round count is right.
    store.lineage(B).invalidate_from(2)
    commit(store, B, 2, val=0.91)
    out = results.Collector(store).sync([A, B])
    assert _core(out) == {"folded": 0, "derived": [A, B], "shards": 2}
    _same_as_manifests(store)
    assert results.load_results(store).set_index(["trial_id", "round"]).loc[(B, 2)].val_acc == 0.91
    # Now the table says what the pointers say: the next start reads and writes no shard.
    before = FS.counters()
    assert _core(results.Collector(store).sync([A, B])) == {"folded": 0, "derived": [], "shards": 0}
    assert FS.counters(since=before).get("write", 0) == 0


def test_rows_written_before_schema_5_are_derived_once(store):
    c = results.Collector(store)
    commit(store, A, 0)
    c.append_round(A, 0)
    c.compact()
    # What an older lth-sweep wrote: no manifest digest in the row.
    table = results.load_table(store, "results")
    old = table.set_column(table.schema.get_field_index("manifest_sha256"), "manifest_sha256",
                           pa.nulls(len(table), pa.string()))
    store.fs.write(store.table_file("results", results.shard_of(A)), rowfiles.encode(old, "results"))
    assert results.Collector(store).sync([A])["derived"] == [A]
    assert results.Collector(store).sync([A])["derived"] == []
    _same_as_manifests(store)


@pytest.mark.parametrize("rounds", [1, 5])
def test_a_clean_start_reads_per_trial_what_does_not_grow_with_rounds(tmp_path, rounds):
    """Reads and listings of sync() + pointers() over a finished sweep: per trial one
    pointer; per shard one read; nothing written. The same with 1 or 5 rounds a lineage."""
    costs = {}
    for n in (20, 80):
        store = SweepStore(str(tmp_path), f"s{n}-{rounds}")
        c = results.Collector(store)
        tids = [f"{i % 16:02x}{i:014d}" for i in range(n)]  # 16 shards
        for tid in tids:
            for k in range(rounds):
                commit(store, tid, k)
                c.append_round(tid, k)
        c.compact()
        before = FS.counters()
        pointers = store.pointers(tids)
        out = results.Collector(store).sync(tids, pointers)
        assert _core(out) == {"folded": 0, "derived": [], "shards": 0} and out["wall"][1] == n * rounds
        costs[n] = FS.counters(since=before)
        assert costs[n].get("write", 0) == 0 and costs[n].get("delete", 0) == 0
    # n pointers + 16 results shards; listings: one per table's _rows folder
    assert costs[20]["read"] == 20 + 16 and costs[80]["read"] == 80 + 16
    assert costs[20]["listdir"] == costs[80]["listdir"] == len(results.SCHEMAS)


def test_a_run_compacts_as_it_goes_and_never_deletes_a_row_appended_meanwhile(store, monkeypatch):
    monkeypatch.setenv("LTH_COMPACT_EVERY", "3")
    c = results.Collector(store)
    for k in range(2):
        commit(store, A, k)
        c.append_round(A, k)
        assert not c.compact_if_due()
    commit(store, B, 0)
    c.append_round(B, 0)
    assert c.compact_if_due()  # the third append: a compaction in a thread of its own
    c.wait_compaction()
    assert c.compactions == 1 and os.listdir(rowfiles.rows_dir(store, "results")) == []
    _same_as_manifests(store)
    # A round appended again while a compaction runs (here: between reading and deleting).
    commit(store, A, 2)
    c.append_round(A, 2)
    real = results.Collector._sync_shard

    def meanwhile(self, *args):
        out = real(self, *args)
        store.lineage(A).invalidate_from(2)
        commit(store, A, 2, val=0.66)
        self.append_round(A, 2)
        return out
    monkeypatch.setattr(results.Collector, "_sync_shard", meanwhile)
    c.compact()
    monkeypatch.undo()
    assert os.listdir(rowfiles.rows_dir(store, "results")) == [f"{A}-r2.parquet"]  # kept: newer than the listing
    assert results.load_results(store).set_index(["trial_id", "round"]).loc[(A, 2)].val_acc == 0.66
    c.compact()
    _same_as_manifests(store)


def test_status_from_the_driver_s_summary_says_what_a_listing_says(store, monkeypatch):
    """On an object store (a local folder is listed: cheap there) `status` reads the
    driver's summary when the driver ended or its lease is alive."""
    import time

    from orchestrator.status import sweep_status
    from orchestrator.summary import Summary
    from workers.lease import SweepLock, process_space

    def status(**kw):
        with monkeypatch.context() as m:  # read as if the folder were a bucket
            m.setattr(store.fs, "local", False)
            return sweep_status(store, planned=planned, **kw)
    planned = {A: 3, B: 3, "ef00000000000003": 3}
    c = results.Collector(store)
    for k in range(3):
        commit(store, A, k)
        c.append_round(A, k)
    commit(store, B, 0)
    c.append_round(B, 0)
    c.compact()
    summary = Summary(store, {t: p["prefix"] for t, p in store.pointers(planned).items()})
    summary.write("ended")
    commit(store, B, 1)  # after the summary: a row file not yet compacted says so
    c.append_round(B, 1)
    got = status()
    os.remove(store.path(store.STATUS))
    listed = sweep_status(store, planned=planned, now=10 ** 12)  # long after: nothing runs
    assert got["source"] == "summary" and listed["source"] == "listing"
    assert (got["trials"], got["rounds"]) == (listed["trials"], listed["rounds"])
    assert got["trials"] == {"total": 3, "done": 1, "running": 0, "pending": 2, "failed": 0}
    assert got["rounds"] == {"committed": 5, "total": 9}
    # A driver that says it runs but holds no live lease was killed: its summary may
    # miss rounds its trials committed since, so the sweep is listed.
    summary.started([B])
    summary.write("running")
    assert status()["source"] == "listing"
    # While the driver runs (its lease is fresh), its running trials count as running.
    store.write_json(SweepLock.LEASE, {"beat": time.time(), "pid": os.getpid(), "space": process_space()})
    got = status()
    assert got["source"] == "summary" and got["trials"]["running"] == 1
    assert status(now=10 ** 12)["trials"]["running"] == 0  # a summary gone stale
