"""One driver per sweep: the local file lock and the object-store lease."""
import json
import time

import pytest

from workers.lease import SweepBusy, SweepLock
from workers.store import SweepStore


def test_local_lock_refuses_second(tmp_path):
    st = SweepStore(str(tmp_path), "s")
    with SweepLock(st):
        with pytest.raises(SweepBusy, match="another driver"):
            SweepLock(SweepStore(str(tmp_path), "s")).__enter__()
    with SweepLock(st):  # released on exit
        pass


@pytest.fixture
def object_store(tmp_path, monkeypatch):
    monkeypatch.setattr(SweepLock, "LEASE_S", 2.0)
    monkeypatch.setattr(SweepLock, "LEASE_BEAT_S", 0.3)

    (tmp_path / "s").mkdir()  # an object store needs no folders; a local path does

    def make():
        st = SweepStore(str(tmp_path), "s")
        st.fs.local = False  # take the object-store path: no OS locks
        return st
    return make


def test_lease_refuses_while_holder_alive(object_store):
    first = SweepLock(object_store()).__enter__()
    try:
        with pytest.raises(SweepBusy, match="another driver"):
            SweepLock(object_store()).__enter__()
        # refused, and the live holder's lease was not taken over
        assert object_store().read_json(SweepLock.LEASE)["token"] == first.token
    finally:
        first.__exit__(None, None, None)
    assert not object_store().fs.exists(object_store().path(SweepLock.LEASE))
    second = SweepLock(object_store()).__enter__()  # free again
    second.__exit__(None, None, None)


def test_stale_lease_of_dead_driver_is_taken_over(object_store):
    st = object_store()
    st.fs.write(st.path(SweepLock.LEASE), json.dumps({"token": "dead", "beat": time.time()}).encode())
    lock = SweepLock(object_store()).__enter__()  # waits out LEASE_S, then takes over
    try:
        assert st.read_json(SweepLock.LEASE)["token"] == lock.token
    finally:
        lock.__exit__(None, None, None)
