"""The Ray Tune adapter: the embedded Ray, its searcher, its signals."""
import pytest

from workers.store import SweepStore


def test_local_ray_has_no_public_dashboard(tmp_path, monkeypatch):
    """The embedded Ray starts without a dashboard, and on loopback if one is turned on."""
    import ray

    from orchestrator import tune_adapter

    seen = {}

    class Stop(Exception):
        pass

    def fake_init(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(Stop):
        tune_adapter.tune_run(SweepStore(str(tmp_path), "s"), None, [], "x", None, 2, 0, None, 0, 0, 0)
    assert seen["address"] == "local"  # never joins a cluster that happens to run here
    assert seen["include_dashboard"] is False and seen["dashboard_host"] == "127.0.0.1"


def test_units_searcher_releases_dependents_first_and_drops_those_of_failures(tmp_path):
    from ray.tune.search import Searcher

    from orchestrator.tune_adapter import UnitSearcher
    from workers.store import SweepStore
    n = 10_000
    configs = [{"unit_id": f"{i:016x}", "members": {f"{i:016x}": {}}} for i in range(n)]
    # unit n-1 is built from 0, n-2 from 1, and n-3 from n-2 (two levels).
    deps = {n - 1: {0}, n - 2: {1}, n - 3: {n - 2}}
    s = UnitSearcher(SweepStore(str(tmp_path), "s"), configs, deps)
    got = [s.suggest(f"t{i}")["unit"]["unit_id"] for i in range(3)]
    assert got == [configs[i]["unit_id"] for i in range(3)]
    s.on_trial_complete("t0")                 # parent 0 done: its dependent jumps the queue
    assert s.suggest("t3")["unit"]["unit_id"] == configs[n - 1]["unit_id"]
    s.on_trial_complete("t1", error=True)     # parent 1 failed: n-2 and, through it, n-3 never start
    assert sorted(s.dropped) == [n - 3, n - 2]
    marker = SweepStore(str(tmp_path), "s").lineage(configs[n - 3]["unit_id"]).read_marker("FAILED.json")
    assert marker["parent"] == configs[n - 2]["unit_id"]
    left = [s.suggest(f"u{i}") for i in range(n - 6)]
    assert all(isinstance(c, dict) for c in left) and s.suggest("end") == Searcher.FINISHED
    assert len({c["unit"]["unit_id"] for c in left}) == n - 6


# A SIGTERM while ray.init runs: ray.init first installs a handler of its own
# that exits 15 on the spot (no "re-run" message, exit 15 instead of 130). The
# signal is sent from inside that handler's installation, so it lands in
# ray.init itself, every time. In a process of its own: signals are global.
_SIGTERM_IN_RAY_INIT = """
import os, signal, sys
import ray._private.utils as U
from orchestrator import tune_adapter
real = U.set_sigterm_handler
def set_and_signal(handler):
    real(handler)
    os.kill(os.getpid(), signal.SIGTERM)
U.set_sigterm_handler = set_and_signal
signal.signal(signal.SIGTERM, signal.default_int_handler)  # what the CLI installs
try:
    tune_adapter._quiet_ray_init(address="local", num_cpus=1, include_dashboard=False)
except KeyboardInterrupt:
    print("graceful", signal.getsignal(signal.SIGTERM) is signal.default_int_handler)
"""


def test_a_sigterm_while_ray_starts_takes_the_graceful_path():
    from tests.helpers import python
    r = python(_SIGTERM_IN_RAY_INIT, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["graceful", "True"], (r.returncode, r.stdout, r.stderr[-2000:])
