"""How `lth-sweep` stops on Ctrl-C or SIGTERM (a scheduler's preemption, `kill`).

Until the driver holds the sweep's lock it has written nothing and started
nothing, so a signal stops the process at once (exit 130, one line): a
KeyboardInterrupt raised there could land inside an import (numpy, torch,
Ray) and leave a half-initialised module behind, which then fails with an
error that has nothing to do with the stop. From the lock on, a signal takes
the graceful path: KeyboardInterrupt, and inside a Tune run Tune's own stop,
so the rounds in flight are committed or dropped cleanly.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading

STOPPED = "lth-sweep: stopped; committed rounds are safe. Re-run the same command to resume."
_at_once = False


def _stop_now(signum, frame) -> None:
    os.write(2, (STOPPED + "\n").encode())
    os._exit(130)


def stop_at_once() -> None:
    """A process's command line: until `graceful()`, a signal ends it at once."""
    global _at_once
    _at_once = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_now)


def graceful() -> None:
    """From here on a signal raises KeyboardInterrupt (SIGTERM as Ctrl-C). In a
    process that did not call stop_at_once (an in-process caller) SIGINT stays
    the caller's."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if _at_once:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def sigterm_ignored():
    """Ignore SIGTERM for the block, at the C level too, even where a library resets it.

    `ray.shutdown()` uninstalls Ray's failure-signal handlers by setting SIGTERM to
    SIG_DFL in C, behind Python's back (Python's own handler table still names
    ours), so a SIGTERM during or after it killed the driver with -15 (a
    scheduler reads "killed", not "stopped, resume"). The block is the driver's
    teardown, whose outcome is already decided: a SIGTERM then has nothing left
    to stop. A guard thread sets SIG_IGN again every half millisecond while the
    block runs, so what remains is a window of at most that after Ray's reset."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    done = threading.Event()

    def guard() -> None:
        while not done.is_set():
            libc.signal(signal.SIGTERM, 1)  # SIG_IGN
            done.wait(0.0005)
    t = threading.Thread(target=guard, name="lth-sigterm-guard", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # Python's table and the C level agree again
