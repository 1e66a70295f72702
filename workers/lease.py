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
        if lease and time.time() - float(lease.get("beat", 0)) < self.LEASE_S:
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
        self.token = uuid.uuid4().hex
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
                                           "pid": os.getpid(), "beat": time.time()})
