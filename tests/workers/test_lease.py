"""One driver per sweep: the local file lock and the object-store lease."""
import json
import os
import subprocess
import sys
import time

import pytest

from workers.lease import SweepBusy, SweepLock, process_space, process_state
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


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.skipif(process_space() is None, reason="no /proc: the lease is only watched")
@pytest.mark.parametrize("holder", ["exited", "zombie", "running", "other space"])
def test_a_holder_in_our_process_space_is_asked_of_the_kernel(object_store, capsys, holder):
    """A lease whose holder shares our boot and pid namespace and runs nothing
    (exited, or killed and not yet reaped) is taken over without watching; a
    running pid, or a lease from another process space, is watched."""
    child, space = None, process_space()
    if holder == "exited":
        pid = _dead_pid()
    elif holder == "other space":
        pid, space = _dead_pid(), "another-boot/pid:[1]"
    else:
        child = subprocess.Popen(["sleep", "60"])
        pid = child.pid
        if holder == "zombie":
            child.kill()
            while process_state(pid) != "Z":
                time.sleep(0.01)
    st = object_store()
    st.fs.write(st.path(SweepLock.LEASE), json.dumps({"token": "old", "pid": pid, "space": space,
                                                      "beat": time.time()}).encode())
    try:
        lock = SweepLock(object_store()).__enter__()
        lock.__exit__(None, None, None)
    finally:
        if child is not None:
            child.kill()
            child.wait()
    out = capsys.readouterr().out
    watched = "checking whether it is alive" in out
    assert watched == (holder in ("running", "other space")), out
    assert ("is no longer running: taking over" in out) == (not watched), out


def test_the_lease_names_its_holder(object_store):
    lock = SweepLock(object_store()).__enter__()
    try:
        lease = object_store().read_json(SweepLock.LEASE)
        assert lease["pid"] == os.getpid() and lease["space"] == process_space()
    finally:
        lock.__exit__(None, None, None)
