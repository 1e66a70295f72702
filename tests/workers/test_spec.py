"""Trial identity: canonical hashing, defaults left out, pinned ids."""
import dataclasses
import json

from workers.spec import DataSpec, PruneSpec, TrainSpec, TrialSpec


def test_pinned_trial_ids():
    # Changing these ids moves every existing sweep's storage: never do it.
    s = TrialSpec(DataSpec("cifar10", fraction=0.01, augmentation="basic"))
    assert s.canonical_json() == '{"data":{"augmentation":"basic","dataset":"cifar10","fraction":0.01}}'
    assert s.trial_id == "af99e92bbc581c1a"
    s2 = TrialSpec(DataSpec("digits", fraction=0.1), train=TrainSpec(epochs=8),
                   prune=PruneSpec(rounds=3), seed=1)
    assert s2.trial_id == "8e3f2e3f4fb1261c"


def test_defaults_left_out_and_spelling_invariant():
    a = TrialSpec(DataSpec("cifar10", fraction=1.0))
    b = TrialSpec(DataSpec("cifar10", fraction=1), train=TrainSpec(epochs=200, lr=0.1))
    assert a.trial_id == b.trial_id
    assert "train" not in a.canonical()
    assert TrialSpec(DataSpec("cifar10", fraction=0.5)).trial_id != a.trial_id


def test_new_field_with_default_keeps_ids():
    @dataclasses.dataclass(frozen=True)
    class TrainSpec2(TrainSpec):
        label_smoothing: float = 0.0
    a = TrialSpec(DataSpec("cifar10", fraction=0.01))
    b = TrialSpec(DataSpec("cifar10", fraction=0.01), train=TrainSpec2())
    assert a.trial_id == b.trial_id


def test_spec_round_trip():
    s = TrialSpec(DataSpec("digits", images_per_class=5, augmentation="rand"), seed=3)
    assert TrialSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
