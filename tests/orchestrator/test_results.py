"""The results table: Parquet shards derived from the manifests, kept current, rebuilt, queried with SQL."""
from __future__ import annotations

import json
import os
import threading

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from orchestrator import results
from orchestrator.formatting import format_frame
from tests.orchestrator.helpers import commit, shard_files, spec_dict


def test_rows_one_per_round_and_columns(store):
    for k in range(3):
        commit(store, "ab00000000000001", k)
    commit(store, "cd00000000000002", 0, spec=spec_dict(fraction=None, ipc=10))
    results.Collector(store).rebuild()
    df = results.load_results(store)
    assert list(df.columns) == results.RESULTS_SCHEMA.names
    assert len(df) == 4 and not df.duplicated(["trial_id", "round"]).any()
    row = df[(df.trial_id == "ab00000000000001") & (df["round"] == 2)].iloc[0]
    assert row.density == pytest.approx(0.64) and row.dataset == "cifar10" and row.seed == 0
    assert row.finished_at == pd.Timestamp("2024-05-01T10:00:10Z")
    ipc = df[df.trial_id == "cd00000000000002"].iloc[0]
    assert pd.isna(ipc.fraction) and ipc.images_per_class == 10
    assert str(df.images_per_class.dtype) == "Int64"  # not float64 because of the nulls
    assert shard_files(store) == ["part-ab.parquet", "part-cd.parquet"]
    layers = results.load_layers(store)
    assert len(layers) == 8 and set(layers.columns) >= {"trial_id", "round", "layer", "density", "numel"}


def test_update_and_rebuild_are_idempotent_and_see_new_rounds(store):
    tid = "ab00000000000001"
    commit(store, tid, 0)
    commit(store, "ab00000000000002", 0)
    c = results.Collector(store)
    c.update([tid])
    c.update([tid])
    assert len(results.load_results(store)) == 1  # the other trial is not known to the table yet
    c.rebuild()
    c.rebuild()
    c.update([tid, tid])
    df = results.load_results(store)
    assert len(df) == 2 and not df.duplicated(["trial_id", "round"]).any()
    commit(store, tid, 1)
    c.update([tid])
    df = results.load_results(store)
    assert sorted(df[df.trial_id == tid]["round"]) == [0, 1] and len(df) == 3
    assert len(results.load_layers(store)) == 6


def test_rebuild_removes_shards_without_rows(store):
    commit(store, "ab00000000000001", 0)
    c = results.Collector(store)
    c.rebuild()
    stray = store.path("results", "part-ff.parquet")
    os.replace(store.path("results", "part-ab.parquet"), stray)
    c.rebuild()
    assert shard_files(store) == ["part-ab.parquet"] and len(results.load_results(store)) == 1


def test_readers_read_the_folder_and_survive_a_killed_write(store, monkeypatch):
    import workers.fs as store_module  # FS.write, the atomic write (os.replace), lives there

    tid = "ab00000000000001"
    commit(store, tid, 0)
    c = results.Collector(store)
    c.update([tid])
    commit(store, tid, 1)

    # Kill the next shard write after its temporary file is complete but
    # before the rename: the temporary file stays, under FS.write's own name.
    class Killed(BaseException):
        pass

    def killed_replace(src, dst):
        raise Killed()
    monkeypatch.setattr(store_module.os, "replace", killed_replace)
    monkeypatch.setattr(store_module.os, "unlink", lambda p: None)
    with pytest.raises(Killed):
        c.update([tid])
    monkeypatch.undo()
    assert any(".tmp-" in n for n in os.listdir(store.results_dir))

    assert len(pd.read_parquet(store.results_dir)) == 1  # the old shard, untouched
    assert pads.dataset(store.results_dir).to_table().num_rows == 1
    assert len(results.load_results(store)) == 1
    c.update([tid])
    assert len(pd.read_parquet(store.results_dir)) == 2
    c.rebuild()  # also sweeps the leftover away
    assert not any(".tmp-" in n for n in os.listdir(store.results_dir))


def test_newer_schema_version_is_refused(store):
    commit(store, "ab00000000000001", 0)
    results.Collector(store).rebuild()
    path = store.path("results", "part-ab.parquet")
    table = pq.read_table(path)
    meta = {**table.schema.metadata, b"lth_sweep.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(results.ResultsError, match="version 99"):
        results.load_results(store)
    with pytest.raises(results.ResultsError):  # nor rewritten (downgraded) by an update
        results.Collector(store).update(["ab00000000000001"])


@pytest.mark.parametrize("content", ["foreign", "corrupt", "empty"])
def test_foreign_or_corrupt_file_is_named(store, content):
    commit(store, "ab00000000000001", 0)
    results.Collector(store).rebuild()
    path = store.path("results", "zz.parquet")
    if content == "foreign":
        pq.write_table(pa.table({"x": [1]}), path)
    elif content == "empty":
        open(path, "wb").close()
    else:
        open(path, "wb").write(b"PAR1 not really")
    with pytest.raises(results.ResultsError, match=r"results/zz\.parquet") as e:
        results.load_results(store)
    assert "\n" not in str(e.value)


def test_a_corrupt_shard_is_rebuilt_by_update(store):
    commit(store, "ab00000000000001", 0)
    commit(store, "ab00000000000002", 0)
    results.Collector(store).rebuild()
    open(store.path("results", "part-ab.parquet"), "wb").write(b"torn")
    results.Collector(store).update(["ab00000000000001"])
    assert len(results.load_results(store)) == 2


def test_concurrent_updates_sharing_a_shard_lose_no_rows(store):
    tids = [f"ab{i:014d}" for i in range(12)]
    for t in tids:
        commit(store, t, 0)
        commit(store, t, 1)
    c = results.Collector(store)
    threads = [threading.Thread(target=c.update, args=([t],)) for t in tids]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    df = results.load_results(store)
    assert len(df) == 24 and set(df.trial_id) == set(tids)
    assert list(zip(df.trial_id, df["round"])) == sorted(zip(df.trial_id, df["round"]))


def test_run_sql_both_views_and_errors(store):
    for k in range(2):
        commit(store, "ab00000000000001", k)
    results.Collector(store).rebuild()
    out = results.run_sql(store, "SELECT count(*) AS n, max(density) AS d FROM results")
    assert out.n[0] == 2 and out.d[0] == 1.0
    out = results.run_sql(store, "SELECT r.round, sum(l.numel) AS numel FROM results r "
                           "JOIN layers l USING (trial_id, round) GROUP BY r.round ORDER BY 1")
    assert list(out.numel) == [1728 + 36864] * 2
    with pytest.raises(results.ResultsError, match="nope") as e:
        results.run_sql(store, "SELECT nope FROM results")
    assert "\n" not in str(e.value)
    with pytest.raises(results.ResultsError):
        results.run_sql(store, "SELEC 1")


def test_empty_table_and_formats(store):
    df = results.load_results(store)
    assert list(df.columns) == results.RESULTS_SCHEMA.names and len(df) == 0
    assert json.loads(format_frame(df, "json")) == []
    commit(store, "ab00000000000001", 0, images_per_s=None)
    results.Collector(store).rebuild()
    rows = json.loads(format_frame(results.load_results(store), "json"))
    assert isinstance(rows, list) and isinstance(rows[0], dict)
    assert rows[0]["images_per_s"] is None and rows[0]["images_per_class"] is None
    assert rows[0]["started_at"].startswith("2024-05-01T10:00:00")
    assert rows[0]["seed"] == 0 and isinstance(rows[0]["epochs"], int)
    small = pd.DataFrame({"name": ["a", "bb"], "x": [0.123456, float("nan")]})
    text = format_frame(small, "table").splitlines()
    assert "0.1235" in text[2] and len({len(l) for l in text[:3]}) == 1
    assert format_frame(small, "csv").splitlines()[0] == "name,x"
    assert json.loads(format_frame(small, "json"))[1] == {"name": "bb", "x": None}


def test_plans_table_without_pandas_is_the_frames_table():
    """`plan` formats its rows without pandas (orchestrator/verbs.py); the text is format_frame's."""
    from orchestrator.formatting import format_records
    rows = [{"trial_id": "a1", "dataset": "digits", "fraction": 0.1, "seed": 0, "cpu": 1.0, "gpu": 0.25},
            {"trial_id": "b2", "dataset": "cifar10", "fraction": None, "seed": 12, "cpu": 0.5, "gpu": 0.0}]
    assert format_records(rows) == format_frame(pd.DataFrame(rows))


def _fp(autocast=None, dtype="float32", device="cuda"):
    """A round's recorded numerics (workers/group.py), as a GPU or CPU round writes them."""
    return {"device": device, "dtype": dtype, "autocast": autocast, "channels_last": device == "cuda",
            "fused": 1, "conv": "solo"}


def test_per_image_columns_precision_and_the_cells_precision(store):
    """test_correct is the raw packed bits of the metrics' base64, test_images its
    length, precision the round's arithmetic; the cell names the lineage's
    precisions, and a lineage that recorded none keeps the spec's own cell."""
    import base64

    from workers.spec import TrialSpec
    bits = bytes([0b10110001, 0b01])  # 10 test images
    bf16, fp32 = _fp("bfloat16"), _fp(device="cpu")
    commit(store, "ab00000000000001", 0, numerics=bf16, test_images=10,
           test_correct=base64.b64encode(bits).decode())
    commit(store, "ab00000000000001", 1, numerics=fp32)         # continued on a CPU node
    commit(store, "ab00000000000002", 0, numerics=bf16, seed=1)  # the same grid point, seed 1, GPU only
    commit(store, "ab00000000000002", 1, numerics=bf16, seed=1)
    commit(store, "ab00000000000003", 0, numerics=_fp(device="cpu", dtype="float64"))
    commit(store, "cd00000000000004", 0)                          # an older sweep's round: no numerics
    results.Collector(store).rebuild()
    df = results.load_results(store).set_index(["trial_id", "round"])
    row = df.loc[("ab00000000000001", 0)]
    assert row.test_correct == bits and row.test_images == 10 and row.precision == "bf16"
    assert df.loc[("ab00000000000001", 1)].precision == "fp32"
    assert pd.isna(df.loc[("ab00000000000001", 1)].test_images)
    assert df.loc[("ab00000000000001", 1)].test_correct is None
    assert df.loc[("ab00000000000003", 0)].precision == "fp64"
    cells = {t: json.loads(df.loc[(t, 0)].cell).get("precision") for t in df.index.get_level_values(0)}
    assert cells == {"ab00000000000001": "bf16+fp32", "ab00000000000002": "bf16", "ab00000000000003": "fp64",
                     "cd00000000000004": None}
    assert df.loc[("ab00000000000001", 0)].cell_id == df.loc[("ab00000000000001", 1)].cell_id
    assert df.loc[("ab00000000000001", 0)].cell_id != df.loc[("ab00000000000002", 0)].cell_id
    old = df.loc[("cd00000000000004", 0)]
    assert pd.isna(old.precision) and old.test_correct is None
    assert old.cell_id == TrialSpec.from_dict(spec_dict()).cell_id  # old sweeps keep their cell ids
    schema = pq.read_schema(store.path("results", "part-ab.parquet"))
    assert schema.field("test_correct").type == pa.binary() and schema.field("precision").type == pa.string()
    # Machine formats carry the bits as the manifests do (base64); a table shows their size.
    frame = results.load_results(store)
    mine = frame[(frame.trial_id == "ab00000000000001") & (frame["round"] == 0)]
    assert json.loads(format_frame(mine, "json"))[0]["test_correct"] == base64.b64encode(bits).decode()
    assert base64.b64encode(bits).decode() in format_frame(mine, "csv")
    assert "<2 bytes>" in format_frame(mine[["trial_id", "test_correct"]], "table")


def test_shards_of_the_previous_schema_are_read_as_today(store):
    """A version-3 shard (before per-image columns and precision) reads with the
    columns derived again from the manifests."""
    commit(store, "ab00000000000001", 0, numerics=_fp("bfloat16"), test_images=10, test_correct="AAE=")
    results.Collector(store).rebuild()
    path = store.path("results", "part-ab.parquet")
    old = pq.read_table(path).drop_columns(["test_images", "test_correct", "precision"])
    pq.write_table(old.replace_schema_metadata({**old.schema.metadata, b"lth_sweep.schema_version": b"3"}), path)
    df = results.load_results(store)
    assert (df.test_images[0], df.test_correct[0], df.precision[0]) == (10, b"\x00\x01", "bf16")
    assert json.loads(df.cell[0])["precision"] == "bf16"
