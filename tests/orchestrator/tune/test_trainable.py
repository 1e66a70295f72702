"""orchestrator/tune/trainable.py: a unit's config runs to its last round without Tune."""
from dataclasses import asdict

from orchestrator.tune.trainable import run_unit
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def _spec(seed):
    return TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=0.0625),
                     train=TrainSpec(epochs=1, batch_size=40, lr=0.05),
                     prune=PruneSpec(rounds=1, rewind_epoch=0), seed=seed)


def _unit(tmp_path, specs, **extra):
    return {"storage": str(tmp_path), "sweep": "s", "unit_id": specs[0].trial_id,
            "members": {s.trial_id: s.to_dict() for s in specs},
            "options": asdict(RunOptions(device="cpu")), "cpu": 1, "gpu": 0, **extra}


def test_a_unit_reports_each_committed_round_and_its_epochs(tmp_path):
    specs = [_spec(0), _spec(1)]
    rounds, epochs = [], []
    run_unit(_unit(tmp_path, specs), {"node": "here", "gpu_ids": []}, rounds.append, epochs.append)
    sweep = SweepStore(str(tmp_path), "s")
    for s in specs:
        got = [m for m in rounds if m["trial_id"] == s.trial_id]
        assert [m["round"] for m in got] == [0, 1]
        assert sweep.lineage(s.trial_id).committed_prefix() == s.num_rounds == 2
        # What was reported is what was committed.
        assert got[-1]["test_acc"] == sweep.lineage(s.trial_id).read_manifest(1)["metrics"]["test_acc"]
        assert sweep.lineage(s.trial_id).read_manifest(0)["metrics"]["node"] == "here"
        assert {(e["round"], e["epoch"]) for e in epochs if e["trial_id"] == s.trial_id} >= {(0, 1), (1, 1)}


def test_a_finished_unit_reports_nothing_again_and_clears_an_old_failure(tmp_path):
    specs = [_spec(0)]
    run_unit(_unit(tmp_path, specs), {"node": "here", "gpu_ids": []}, lambda m: None, lambda e: None)
    store = SweepStore(str(tmp_path), "s").lineage(specs[0].trial_id)
    store.mark_failed("an earlier attempt failed")
    again = []
    run_unit(_unit(tmp_path, specs), {"node": "here", "gpu_ids": []}, again.append, again.append)
    assert again == [] and store.read_marker(store.FAILED) is None
