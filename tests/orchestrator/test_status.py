"""`lth-sweep status`: counts and ETA read from storage alone."""
from __future__ import annotations

import os
import time

import pytest

from orchestrator import results as R
from orchestrator.status import format_status, sweep_status
from tests.orchestrator.helpers import commit, spec_dict


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

    # Without sweep.json: the trials found, rounds from spec.json (spec.num_rounds).
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
