"""One driver per sweep: the kernel lock on local paths, the lease on object
stores (exercised here through the same FS calls on a local folder)."""
import json
import time

import pytest

from orchestrator.driver import DriverError, SweepLock
from workers.store import SweepStore


def test_local_lock_refuses_second(tmp_path):
    st = SweepStore(str(tmp_path), "s")
    with SweepLock(st):
        with pytest.raises(DriverError, match="another driver"):
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
        with pytest.raises(DriverError, match="another driver"):
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


def test_local_ray_has_no_public_dashboard(tmp_path, monkeypatch):
    """The embedded Ray starts without a dashboard, and on loopback if one is turned on."""
    import ray

    from orchestrator import driver

    seen = {}

    class Stop(Exception):
        pass

    def fake_init(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(Stop):
        driver._tune_run(SweepStore(str(tmp_path), "s"), None, [], "x", None, 2, 0, None, 0, 0, 0)
    assert seen["address"] == "local"  # never joins a cluster that happens to run here
    assert seen["include_dashboard"] is False and seen["dashboard_host"] == "127.0.0.1"
