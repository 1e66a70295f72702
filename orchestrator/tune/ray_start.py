"""Starting Ray (a fresh local one) or joining a cluster, quietly and without
losing the CLI's graceful SIGTERM, and waiting for a cluster's nodes."""
from __future__ import annotations

import signal
import threading
import time

import ray

from orchestrator.formatting import number
from orchestrator.resources import DriverError, check_resources
from orchestrator.grid import Unit
from workers.lease import log


def wait_for_nodes(trials: list[Unit], where: str, wait_s: float) -> None:
    """On a cluster, nodes may still be joining or wait for the autoscaler:
    ask it for the largest bundle and wait up to `wait_s` for a node that
    fits every trial, then fail as check_resources does."""
    deadline = time.monotonic() + wait_s
    asked = False
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        try:
            return check_resources(trials, nodes, where)
        except DriverError:
            if time.monotonic() >= deadline:
                raise
        if not asked:
            asked = True
            big = max(trials, key=lambda t: (t.resources["gpu"], t.resources["cpu"])).resources
            try:  # a no-op on clusters without an autoscaler
                from ray.autoscaler.sdk import request_resources
                request_resources(bundles=[{"CPU": big["cpu"], "GPU": big["gpu"]}])
            except Exception:
                pass
            log(f"no node of {where} fits cpu={number(big['cpu'])} gpu={number(big['gpu'])} yet; waiting up to "
                 f"{wait_s:.0f}s for one to join (--wait-for-nodes)")
        time.sleep(2.0)


def quiet_ray_init(**kw) -> list[str]:
    """ray.init with Ray's own start-up notices held back; returns them (the
    driver prints one line of its own instead of Ray's multi-line warnings)."""
    import logging
    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record):
            held.append(record.getMessage().splitlines()[0])

    ray_log = logging.getLogger("ray")
    hold, old = Hold(level=logging.WARNING), ray_log.propagate
    saved = ray_log.handlers[:]
    ray_log.handlers, ray_log.propagate = [hold], False
    # ray.init replaces the SIGTERM handler with one that exits 15 on the spot;
    # the caller's (the CLI's: stop as gracefully as Ctrl-C) stays in charge.
    main = threading.current_thread() is threading.main_thread()
    term = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**kw)
    except SystemExit as e:
        if e.code == signal.SIGTERM and callable(term):
            term(signal.SIGTERM, None)  # default_int_handler: KeyboardInterrupt, the graceful path
        raise
    finally:
        ray_log.handlers, ray_log.propagate = saved, old
        if term is not None:
            signal.signal(signal.SIGTERM, term)
    return held


def connect(address: str) -> float:
    """Join the cluster at `address` (quietly); returns its GPU count now."""
    quiet_ray_init(address=address, log_to_driver=False, logging_level="WARNING")
    return float(ray.cluster_resources().get("GPU", 0))
