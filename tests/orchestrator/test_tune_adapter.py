"""The Ray Tune adapter: the embedded Ray."""
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
