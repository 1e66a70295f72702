"""orchestrator/tune/run.py: the embedded Ray a run starts."""
import pytest

from orchestrator.request import SweepRequest
from workers.store import SweepStore


def test_local_ray_has_no_public_dashboard(tmp_path, monkeypatch):
    """The embedded Ray starts without a dashboard, and on loopback if one is turned on."""
    import ray

    from orchestrator.tune import run

    seen = {}

    class Stop(Exception):
        pass

    def fake_init(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(ray, "init", fake_init)
    with pytest.raises(Stop):
        run.run(SweepRequest(trials=(), experiment="x", sweep_name="s", storage=str(tmp_path), num_cpus=2,
                             num_gpus=0), SweepStore(str(tmp_path), "s"), [], (0, 0))
    assert seen["address"] == "local"  # never joins a cluster that happens to run here
    assert seen["include_dashboard"] is False and seen["dashboard_host"] == "127.0.0.1"
