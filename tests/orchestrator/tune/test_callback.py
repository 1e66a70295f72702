"""orchestrator/tune/callback.py: each reported round becomes row files, at a constant storage cost."""
from __future__ import annotations

import os
from types import SimpleNamespace

from orchestrator import results
from orchestrator.results import rowfiles
from orchestrator.tune.callback import ResultsCallback
from tests.orchestrator.helpers import commit, metrics
from workers.store import FS, SweepStore


def _report(store, tid, k):
    """What orchestrator/tune/trial.py reports for a committed round."""
    m = metrics(store, tid, k)
    return {**{key: m[key] for key in ("round", "gpu_ids", "val_acc", "test_acc", "density", "wall_s")},
            "lth_trial_id": tid}


def test_each_reported_round_is_appended_from_its_manifest_alone(tmp_path):
    store = SweepStore(str(tmp_path), "s")
    cb = ResultsCallback(store, None, 0, 4, plain=True)
    unit = SimpleNamespace(config={"unit": {"unit_id": "u", "members": {"ab00000000000001": {}}}})
    tid = "ab00000000000001"
    cb.on_trial_result(0, [], unit, {"lth_trial_id": tid, "progress": True, "round": 0, "epoch": 1, "epochs": 4})
    assert cb.rounds_committed == 0
    ops = []
    for k in range(3):
        commit(store, tid, k)
        before = FS.counters()
        cb.on_trial_result(0, [], unit, _report(store, tid, k))
        spent = FS.counters(since=before)
        ops.append({op: n for op, n in spent.items() if not op.startswith("bytes")})
    assert ops == [{"read": 1, "write": 2}] * 3  # the manifest; the results row and the layers rows
    assert cb.rounds_committed == 3 and cb.done_rounds == 3
    assert sorted(os.listdir(rowfiles.rows_dir(store, "results"))) == [f"{tid}-r{k}.parquet" for k in range(3)]
    assert not os.path.exists(store.table_file("results", results.shard_of(tid)))  # no shard rewritten per round
    cb.on_trial_complete(0, [], unit)
    assert sorted(results.load_results(store)["round"]) == [0, 1, 2]
    # A round reported but no longer committed (invalidated meanwhile) appends nothing.
    store.lineage(tid).invalidate_from(2)
    cb.on_trial_result(0, [], unit, _report(store, tid, 2))
    assert cb.rounds_committed == 3
    cb.close()
    cb.collector.rebuild()  # the run's end
    assert sorted(results.load_results(store)["round"]) == [0, 1]
    assert os.listdir(rowfiles.rows_dir(store, "results")) == []


def test_a_failing_append_does_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    store = SweepStore(str(tmp_path), "s")
    cb = ResultsCallback(store, None, 0, 1, plain=True)
    commit(store, "ab00000000000001", 0)

    def full(*_):
        raise OSError("No space left on device")

    monkeypatch.setattr(FS, "write", full)
    cb.on_trial_result(0, [], None, _report(store, "ab00000000000001", 0))
    seen = capsys.readouterr()
    assert "results table not updated" in seen.out + seen.err and cb.done_rounds == 1
