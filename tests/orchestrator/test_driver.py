"""orchestrator/driver.py: plan -> check -> lock -> skip what is done -> hand the rest to Tune.

Tune itself is replaced here by a recorder of what the driver hands it (the
real hand-over runs in tests/integration/); what is tested is the driver's
own part: what it refuses before anything starts, what it writes, what it
skips and what it passes on."""
import json

import pytest
import yaml

from orchestrator.config import validate
from orchestrator.driver import run_sweep
from orchestrator.grid import expand
from orchestrator.request import SweepRequest
from orchestrator.resources import DriverError
from orchestrator.tune.trainable import run_unit
from tests.helpers import TINY_YAML
from workers.spec import RunOptions
from workers.store import SweepStore


def _trials(**defaults):
    doc = yaml.safe_load(TINY_YAML)
    doc["defaults"].update(defaults)
    doc["defaults"]["imp"] = {**doc["defaults"]["imp"], "rounds": 1, "rewind_epoch": 0}
    doc["defaults"]["train"] = {**doc["defaults"]["train"], "epochs": 1}
    return expand(validate(doc)["experiments"]["tiny"])


@pytest.fixture
def handed(monkeypatch):
    """What the driver hands to Tune, instead of starting it."""
    import orchestrator.tune.run as tune_run
    calls = []

    def record(request, sweep, todo, rounds, timings=None, handover=None):
        calls.append({"todo": todo, "rounds": rounds, "timings": dict(timings or {})})
        return 0
    monkeypatch.setattr(tune_run, "run", record)
    return calls


def _request(tmp_path, trials, **kw):
    return SweepRequest(trials=trials, experiment="tiny", sweep_name="s", storage=str(tmp_path / "runs"),
                        num_cpus=2, num_gpus=0, **kw)


def test_a_unit_no_node_can_hold_is_refused_before_anything_is_written(tmp_path, handed):
    trials = _trials(resources={"cpu": 4, "gpu": 0})
    with pytest.raises(DriverError, match="asks for cpu=4 gpu=0 but the largest node of the local Ray has cpu=2"):
        run_sweep(_request(tmp_path, trials))
    assert not handed and not (tmp_path / "runs").exists()


def test_a_new_sweep_is_planned_and_every_lineage_handed_over(tmp_path, handed):
    trials = _trials()
    assert run_sweep(_request(tmp_path, trials)) == 0
    (call,) = handed
    assert sorted(t.trial_id for u in call["todo"] for t in u.trials) == sorted(t.trial_id for t in trials)
    assert call["rounds"] == (0, sum(t.spec.num_rounds for t in trials)) == (0, 8)
    plan = json.loads((tmp_path / "runs" / "s" / "sweep.json").read_text())
    assert plan["experiment"] == "tiny" and set(plan["trials"]) == {t.trial_id for t in trials}
    assert all(p["rounds"] == 2 for p in plan["trials"].values())


def test_finished_lineages_are_skipped_and_a_finished_sweep_starts_nothing(tmp_path, handed):
    trials = _trials()
    sweep = SweepStore(str(tmp_path / "runs"), "s")
    done = trials[0]
    run_unit({"storage": sweep.fs.uri, "sweep": "s", "unit_id": done.trial_id,
              "members": {done.trial_id: done.spec.to_dict()},
              "options": RunOptions(device="cpu").__dict__, "cpu": 1, "gpu": 0},
             {"node": "here", "gpu_ids": []}, lambda m: None, lambda e: None)
    assert run_sweep(_request(tmp_path, trials)) == 0
    (call,) = handed
    assert done.trial_id not in {t.trial_id for u in call["todo"] for t in u.trials}
    assert call["rounds"] == (2, 8)
    for t in trials[1:]:  # finish the rest by hand: nothing is left to hand over
        run_unit({"storage": sweep.fs.uri, "sweep": "s", "unit_id": t.trial_id,
                  "members": {t.trial_id: t.spec.to_dict()}, "options": RunOptions(device="cpu").__dict__,
                  "cpu": 1, "gpu": 0}, {"node": "here", "gpu_ids": []}, lambda m: None, lambda e: None)
    assert run_sweep(_request(tmp_path, trials)) == 0
    assert len(handed) == 1  # Tune was not started again
    assert len(sweep.fs.listdir(sweep.results_dir)) > 0  # the table is rebuilt from the manifests


def test_a_held_sweep_is_refused(tmp_path, handed):
    from workers.lease import SweepLock
    trials = _trials()
    sweep = SweepStore(str(tmp_path / "runs"), "s")
    with SweepLock(sweep):
        with pytest.raises(Exception, match="(?i)held|running|lock"):
            run_sweep(_request(tmp_path, trials))
    assert not handed
