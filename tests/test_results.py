"""Results table (Parquet shards derived from manifests), queries, and status."""
from __future__ import annotations

import json
import os
import threading
import time

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from orchestrator import results as R
from orchestrator.status import format_status, sweep_status
from workers.store import SweepStore


def spec_dict(dataset="cifar10", fraction=0.01, ipc=None, aug="none", method="imp", seed=0,
              rounds=3):
    return {"data": {"dataset": dataset, "fraction": fraction, "images_per_class": ipc,
                     "augmentation": aug},
            "model": {"arch": "resnet18", "width": 1.0, "init": "random"},
            "train": {"epochs": 4, "batch_size": 100, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 0.0005, "schedule": "cosine", "bf16": True,
                      "channels_last": True},
            "prune": {"method": method, "rounds": rounds, "rate": 0.2, "rewind_epoch": 2,
                      "prunable": "conv"},
            "seed": seed}


def metrics(store, tid, k, val=0.5, test=0.4, density=None, wall=10.0, **over):
    """The keys of lineage._train_round's metrics, with fake values."""
    d = 0.8 ** k if density is None else density
    m = {"trial_id": tid, "round": k, "density": d, "train_acc": 0.9, "val_acc": val,
         "test_acc": test, "epochs": 4 if k == 0 else 2, "wall_s": wall, "images_per_s": 1000.0,
         "node": "node-a", "gpu_ids": "0", "device": "cpu",
         "started_at": "2024-05-01T10:00:00.000+00:00",
         "finished_at": "2024-05-01T10:00:10.000+00:00",
         "checkpoint_uri": store.lineage(tid).round_uri(k),
         "layers": [{"layer": "conv1.weight", "density": d, "numel": 1728},
                    {"layer": "layer1.0.conv1.weight", "density": d, "numel": 36864}],
         "history": [{"epoch": 1, "train_loss": 2.0, "train_acc_running": 0.2, "lr": 0.1}]}
    m.update(over)
    return m


def commit(store, tid, k, spec=None, **kw):
    spec = spec or spec_dict()
    lin = store.lineage(tid)
    lin.write_spec(spec)
    lin.commit_round(k, {"weights.safetensors": b"w%d" % k}, metrics(store, tid, k, **kw), spec)


@pytest.fixture
def store(tmp_path):
    return SweepStore(str(tmp_path), "s")


def shard_files(store, kind="results"):
    return sorted(os.listdir(store.path(kind)))


# --- collection ----------------------------------------------------------------

def test_rows_one_per_round_and_columns(store):
    for k in range(3):
        commit(store, "ab00000000000001", k)
    commit(store, "cd00000000000002", 0, spec=spec_dict(fraction=None, ipc=10))
    R.Collector(store).rebuild()
    df = R.load_results(store)
    assert list(df.columns) == R.RESULTS_SCHEMA.names
    assert len(df) == 4 and not df.duplicated(["trial_id", "round"]).any()
    row = df[(df.trial_id == "ab00000000000001") & (df["round"] == 2)].iloc[0]
    assert row.density == pytest.approx(0.64) and row.dataset == "cifar10" and row.seed == 0
    assert row.finished_at == pd.Timestamp("2024-05-01T10:00:10Z")
    ipc = df[df.trial_id == "cd00000000000002"].iloc[0]
    assert pd.isna(ipc.fraction) and ipc.images_per_class == 10
    assert str(df.images_per_class.dtype) == "Int64"  # not float64 because of the nulls
    assert shard_files(store) == ["part-ab.parquet", "part-cd.parquet"]
    layers = R.load_layers(store)
    assert len(layers) == 8 and set(layers.columns) >= {"trial_id", "round", "layer", "density", "numel"}


def test_update_and_rebuild_are_idempotent_and_see_new_rounds(store):
    tid = "ab00000000000001"
    commit(store, tid, 0)
    commit(store, "ab00000000000002", 0)
    c = R.Collector(store)
    c.update([tid])
    c.update([tid])
    assert len(R.load_results(store)) == 1  # the other trial is not known to the table yet
    c.rebuild()
    c.rebuild()
    c.update([tid, tid])
    df = R.load_results(store)
    assert len(df) == 2 and not df.duplicated(["trial_id", "round"]).any()
    commit(store, tid, 1)
    c.update([tid])
    df = R.load_results(store)
    assert sorted(df[df.trial_id == tid]["round"]) == [0, 1] and len(df) == 3
    assert len(R.load_layers(store)) == 6


def test_rebuild_removes_shards_without_rows(store):
    commit(store, "ab00000000000001", 0)
    c = R.Collector(store)
    c.rebuild()
    stray = store.path("results", "part-ff.parquet")
    os.replace(store.path("results", "part-ab.parquet"), stray)
    c.rebuild()
    assert shard_files(store) == ["part-ab.parquet"] and len(R.load_results(store)) == 1


def test_readers_read_the_folder_and_survive_a_killed_write(store, monkeypatch):
    import workers.store as S

    tid = "ab00000000000001"
    commit(store, tid, 0)
    c = R.Collector(store)
    c.update([tid])
    commit(store, tid, 1)

    # Kill the next shard write after its temporary file is complete but
    # before the rename: the temporary file stays, under FS.write's own name.
    class Killed(BaseException):
        pass

    def killed_replace(src, dst):
        raise Killed()
    monkeypatch.setattr(S.os, "replace", killed_replace)
    monkeypatch.setattr(S.os, "unlink", lambda p: None)
    with pytest.raises(Killed):
        c.update([tid])
    monkeypatch.undo()
    assert any(".tmp-" in n for n in os.listdir(store.results_dir))

    assert len(pd.read_parquet(store.results_dir)) == 1  # the old shard, untouched
    assert pads.dataset(store.results_dir).to_table().num_rows == 1
    assert len(R.load_results(store)) == 1
    c.update([tid])
    assert len(pd.read_parquet(store.results_dir)) == 2
    c.rebuild()  # also sweeps the leftover away
    assert not any(".tmp-" in n for n in os.listdir(store.results_dir))


def test_newer_schema_version_is_refused(store):
    commit(store, "ab00000000000001", 0)
    R.Collector(store).rebuild()
    path = store.path("results", "part-ab.parquet")
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"lth_sweep.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(R.ResultsError, match="version 99"):
        R.load_results(store)
    with pytest.raises(R.ResultsError):  # nor rewritten (downgraded) by an update
        R.Collector(store).update(["ab00000000000001"])


@pytest.mark.parametrize("content", ["foreign", "corrupt", "empty"])
def test_foreign_or_corrupt_file_is_named(store, content):
    commit(store, "ab00000000000001", 0)
    R.Collector(store).rebuild()
    path = store.path("results", "zz.parquet")
    if content == "foreign":
        pq.write_table(pa.table({"x": [1]}), path)
    elif content == "empty":
        open(path, "wb").close()
    else:
        open(path, "wb").write(b"PAR1 not really")
    with pytest.raises(R.ResultsError, match=r"results/zz\.parquet") as e:
        R.load_results(store)
    assert "\n" not in str(e.value)


def test_a_corrupt_shard_is_rebuilt_by_update(store):
    commit(store, "ab00000000000001", 0)
    commit(store, "ab00000000000002", 0)
    R.Collector(store).rebuild()
    open(store.path("results", "part-ab.parquet"), "wb").write(b"torn")
    R.Collector(store).update(["ab00000000000001"])
    assert len(R.load_results(store)) == 2


def test_concurrent_updates_sharing_a_shard_lose_no_rows(store):
    tids = [f"ab{i:014d}" for i in range(12)]
    for t in tids:
        commit(store, t, 0)
        commit(store, t, 1)
    c = R.Collector(store)
    threads = [threading.Thread(target=c.update, args=([t],)) for t in tids]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    df = R.load_results(store)
    assert len(df) == 24 and set(df.trial_id) == set(tids)
    assert list(zip(df.trial_id, df["round"])) == sorted(zip(df.trial_id, df["round"]))


# --- queries -----------------------------------------------------------------

def test_run_sql_both_views_and_errors(store):
    for k in range(2):
        commit(store, "ab00000000000001", k)
    R.Collector(store).rebuild()
    out = R.run_sql(store, "SELECT count(*) AS n, max(density) AS d FROM results")
    assert out.n[0] == 2 and out.d[0] == 1.0
    out = R.run_sql(store, "SELECT r.round, sum(l.numel) AS numel FROM results r "
                           "JOIN layers l USING (trial_id, round) GROUP BY r.round ORDER BY 1")
    assert list(out.numel) == [1728 + 36864] * 2
    with pytest.raises(R.ResultsError, match="nope") as e:
        R.run_sql(store, "SELECT nope FROM results")
    assert "\n" not in str(e.value)
    with pytest.raises(R.ResultsError):
        R.run_sql(store, "SELEC 1")


def test_empty_table_and_formats(store):
    df = R.load_results(store)
    assert list(df.columns) == R.RESULTS_SCHEMA.names and len(df) == 0
    assert json.loads(R.format_frame(df, "json")) == []
    commit(store, "ab00000000000001", 0, images_per_s=None)
    R.Collector(store).rebuild()
    rows = json.loads(R.format_frame(R.load_results(store), "json"))
    assert isinstance(rows, list) and isinstance(rows[0], dict)
    assert rows[0]["images_per_s"] is None and rows[0]["images_per_class"] is None
    assert rows[0]["started_at"].startswith("2024-05-01T10:00:00")
    assert rows[0]["seed"] == 0 and isinstance(rows[0]["epochs"], int)
    small = pd.DataFrame({"name": ["a", "bb"], "x": [0.123456, float("nan")]})
    text = R.format_frame(small, "table").splitlines()
    assert "0.1235" in text[2] and len({len(l) for l in text[:3]}) == 1
    assert R.format_frame(small, "csv").splitlines()[0] == "name,x"
    assert json.loads(R.format_frame(small, "json"))[1] == {"name": "bb", "x": None}


# --- status ------------------------------------------------------------------

def test_status_counts(store):
    now = time.time()
    old = now - 3600
    done, running, beat, failed, pending = (f"{c}{c}00000000000001" for c in "abcde")
    for k in range(3):
        commit(store, done, k, spec=spec_dict(rounds=2))
    commit(store, running, 0)                    # committed just now -> running
    commit(store, beat, 0)
    commit(store, failed, 0)
    store.lineage(failed).write_marker("FAILED.json", {"error": "boom"})
    commit(store, pending, 0)                    # nothing for an hour -> pending
    for tid in (beat, failed, pending):
        os.utime(store.lineage(tid).round_dir(0) + "/MANIFEST.json", (old, old))
    store.lineage(beat).heartbeat({"round": 1})
    R.Collector(store).rebuild()

    # Without sweep.json: the trials found, rounds from spec.json (prune.rounds + 1).
    d = sweep_status(store, now=now)
    assert d["trials"] == {"total": 5, "done": 1, "running": 2, "pending": 1, "failed": 1}
    assert d["rounds"] == {"committed": 7, "total": 19}
    assert d["eta_s"] == pytest.approx(12 * 10.0 / 2)  # remaining x mean wall_s / running

    # With sweep.json: its trial list and round counts win; unknown trials are not counted.
    store.write_json("sweep.json", {"sweep": "s", "trials": {
        done: {"rounds": 3}, running: {"rounds": 4}, beat: {"rounds": 4},
        failed: {"rounds": 4}, "ff00000000000001": {"rounds": 4}}})
    d = sweep_status(store, now=now)
    assert d["trials"] == {"total": 5, "done": 1, "running": 2, "pending": 1, "failed": 1}
    assert d["rounds"] == {"committed": 6, "total": 19}
    assert d["sweep"] == "s"
    text = format_status(d)
    assert "6/19" in text and "failed 1" in text

    # Much later: nothing is alive any more.
    d = sweep_status(store, now=now + 3600)
    assert d["trials"]["running"] == 0 and d["trials"]["pending"] == 3


def test_status_of_an_empty_sweep(store):
    d = sweep_status(store)
    assert d["trials"]["total"] == 0 and d["rounds"] == {"committed": 0, "total": 0}
    assert "0/0" in format_status(d)


@pytest.mark.parametrize("content", [b"", b"PAR1 junk"])
def test_cli_query_on_bad_results_is_one_line(store, capsys, content):
    from orchestrator.cli import main
    commit(store, "ab00000000000001", 0)
    R.Collector(store).rebuild()
    open(store.path("results", "zz.parquet"), "wb").write(content)
    root = store.fs.root
    for argv in (["query", "--compare"], ["query"], ["query", "--sql", "select 1 from results"]):
        rc = main(argv + ["--storage", root, "--name", store.sweep])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "zz.parquet" in err, (argv, err)
