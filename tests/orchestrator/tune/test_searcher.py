"""orchestrator/tune/searcher.py: which unit starts next."""


def test_units_searcher_releases_dependents_first_and_drops_those_of_failures(tmp_path):
    from ray.tune.search import Searcher

    from orchestrator.tune.searcher import UnitSearcher
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
