"""One driver per sweep: the storage's lock (local/NFS) or lease (object stores).

    with SweepLock(SweepStore(storage, name)):
        ...                     # the only driver of this sweep until the block ends
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
import time

from workers.store import StorageError, SweepStore


class SweepBusy(StorageError):
    """Another driver holds the sweep (a one-line, user-facing message)."""


def log(msg: str) -> None:
    stamp = _dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


class SweepLock:
    """One driver per sweep: a second one is refused instead of racing.

    On a local/NFS path this is an OS file lock, released by the kernel when
    the driver dies. Object stores have no locks, so there the driver holds a
    lease object (DRIVER_LEASE.json) whose heartbeat it renews every
    LEASE_BEAT_S. A newcomer that finds a fresh lease watches it: if the
    heartbeat moves, a live driver holds the sweep and the newcomer is
    refused; if it stays still for LEASE_S, the holder is dead (a SIGKILLed
    driver, a lost head node) and the newcomer takes over. Re-running after a
    crash therefore waits at most LEASE_S, and never races a live driver.

    A newcomer in the holder's own process space (the same kernel boot and
    pid namespace, as the lease records them) can ask the kernel instead: a
    holder pid that is not running means a dead driver, taken over at once
    (the usual re-run after a kill on the head node). A pid that runs, perhaps
    reused by another process, only sends it back to watching the heartbeat.
    """

    LEASE = SweepStore.LEASE
    LEASE_S = 20.0
    LEASE_BEAT_S = 5.0

    def __init__(self, sweep: SweepStore):
        self.sweep = sweep
        self.lock = None
        self._stop = None
        if sweep.fs.local:
            from filelock import FileLock
            os.makedirs(sweep.dir, exist_ok=True)
            self.path = os.path.join(sweep.dir, sweep.LOCK)
            self.lock = FileLock(self.path)

    def __enter__(self):
        if self.lock is not None:
            from filelock import Timeout
            try:
                self.lock.acquire(timeout=0)
            except Timeout:
                raise SweepBusy(f"another driver is already running this sweep (lock {self.path}); "
                                  "wait for it or stop it first") from None
            return self
        self._acquire_lease()
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
            return
        self._stop.set()
        self.sweep.fs.delete_file(self.sweep.path(self.LEASE))

    # --- the lease, for object stores -----------------------------------------
    def _read_lease(self):
        try:
            lease = self.sweep.read_json(self.LEASE)
        except (ValueError, OSError):  # torn or unreadable: treat as no lease
            return None
        return lease if isinstance(lease, dict) else None

    def _acquire_lease(self) -> None:
        import threading
        import uuid
        lease = self._read_lease()
        if lease and _holder_gone(lease):
            log(f"the driver that held this sweep's lease (host {lease.get('host')}, pid {lease.get('pid')}) "
                "is no longer running: taking over")
        elif lease and time.time() - float(lease.get("beat", 0)) < self.LEASE_S:
            first = lease.get("beat")
            log(f"a driver lease exists (host {lease.get('host')}); checking whether it is alive "
                 f"(at most {self.LEASE_S:.0f}s)")
            deadline = time.time() + self.LEASE_S
            while time.time() < deadline:
                time.sleep(1.0)
                now_lease = self._read_lease()
                if now_lease is None:
                    break
                if now_lease.get("beat") != first:
                    raise SweepBusy(
                        f"another driver is already running this sweep (host {now_lease.get('host')}, "
                        f"pid {now_lease.get('pid')}; lease {self.sweep.fs.to_uri(self.sweep.path(self.LEASE))})"
                        "; wait for it or stop it first")
        self.token, self.space = uuid.uuid4().hex, process_space()
        self._stop = threading.Event()
        self._beat()

        def renew():
            while not self._stop.wait(self.LEASE_BEAT_S):
                try:
                    self._beat()
                except Exception:
                    pass  # a missed beat is retried; LEASE_S covers several

        threading.Thread(target=renew, name="lth-lease", daemon=True).start()

    def _beat(self) -> None:
        self.sweep.write_json(self.LEASE, {"token": self.token, "host": socket.gethostname(),
                                           "pid": os.getpid(), "space": self.space,
                                           "beat": time.time()})


def lease_alive(sweep: SweepStore) -> bool:
    """Whether a driver holds the sweep's lease on an object store now (its heartbeat
    is fresh and, where we can tell, its process runs). Reads the lease only."""
    try:
        lease = sweep.read_json(SweepLock.LEASE)
    except (ValueError, OSError):
        return False
    if not isinstance(lease, dict) or _holder_gone(lease):
        return False
    return time.time() - float(lease.get("beat", 0) or 0) < SweepLock.LEASE_S


def process_space() -> str | None:
    """Where a pid names one process: this kernel's boot and pid namespace
    (None off Linux). Hostnames are not enough: containers on one host can
    share a hostname and not see each other's processes."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` ('Z': a zombie), None if no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _holder_gone(lease: dict) -> bool:
    """The lease's holder shares our process space and its pid runs nothing
    (or a zombie: killed, not yet reaped)."""
    space, pid = process_space(), lease.get("pid")
    if space is None or lease.get("space") != space or not isinstance(pid, int) or pid <= 0 \
            or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it runs, under another user
        return False
    return process_state(pid) in (None, "Z")  # None: gone between the two looks
