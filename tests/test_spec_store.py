"""Trial identity and the storage commit protocol."""
import dataclasses
import json
import os

import pytest

from workers.spec import DataSpec, PruneSpec, TrainSpec, TrialSpec
from workers.store import CorruptRound, StorageError, SweepStore, check_name


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


@pytest.mark.parametrize("bad", ["..", "../x", "/abs", "a/b", "a\x00b", "", ".hidden", "x" * 200])
def test_names_cannot_escape_root(bad):
    with pytest.raises(StorageError):
        check_name("sweep", bad)
    with pytest.raises(StorageError):
        SweepStore("/tmp", bad)


def _commit(lin, k, payload=b"w" * 100):
    return lin.commit_round(k, {"weights.safetensors": payload, "mask.safetensors": b"m"},
                            {"round": k, "val_acc": 0.5}, {"seed": 0})


def test_commit_and_verify(tmp_path):
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    assert lin.committed_prefix() == 0
    _commit(lin, 0)
    _commit(lin, 1)
    assert lin.committed_prefix() == 2
    files = lin.load_round(1, ["weights.safetensors"])
    assert files["weights.safetensors"] == b"w" * 100
    # no temp files are left behind
    assert not [f for f in os.listdir(lin.round_dir(1)) if ".tmp" in f]


def test_round_without_manifest_does_not_exist(tmp_path):
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    _commit(lin, 0)
    os.makedirs(lin.round_dir(1))
    open(f"{lin.round_dir(1)}/weights.safetensors", "wb").write(b"half")
    assert lin.committed_prefix() == 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_detected(tmp_path, damage):
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    _commit(lin, 0)
    p = f"{lin.round_dir(0)}/weights.safetensors"
    data = open(p, "rb").read()
    data = data[:10] if damage == "truncate" else bytes([data[0] ^ 1]) + data[1:]
    open(p, "wb").write(data)
    with pytest.raises(CorruptRound):
        lin.load_round(0, ["weights.safetensors"])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_manifest_means_uncommitted(tmp_path, damage):
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    _commit(lin, 0)
    p = f"{lin.round_dir(0)}/MANIFEST.json"
    raw = open(p, "rb").read()
    raw = raw[: len(raw) // 2] if damage == "truncate" else raw.replace(b'"val_acc": 0.5', b'"val_acc": 0.9')
    open(p, "wb").write(raw)
    assert lin.read_manifest(0) is None
    assert lin.committed_prefix() == 0


def test_invalidate_from(tmp_path):
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    for k in range(4):
        _commit(lin, k)
    assert lin.invalidate_from(2) == [2, 3]
    assert lin.committed_prefix() == 2
    assert any(n.startswith("MANIFEST.invalid") for n in os.listdir(lin.round_dir(2)))


def test_partial_checkpoint_keeps_newest(tmp_path):
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    lin.save_partial(1, 2, {"model.safetensors": b"a"}, {"history": []})
    lin.save_partial(1, 4, {"model.safetensors": b"b"}, {"history": [1]})
    epoch, files, meta = lin.load_partial(1)
    assert (epoch, files["model.safetensors"], meta["history"]) == (4, b"b", [1])
    assert os.listdir(lin.partial_dir(1)) == ["epoch_4"]
    # a damaged newest checkpoint is skipped, not trusted
    open(f"{lin.partial_dir(1)}/epoch_4/model.safetensors", "wb").write(b"x")
    assert lin.load_partial(1) is None
    lin.clear_partial(1)
    assert lin.load_partial(1) is None


def test_stale_partial_of_committed_round_is_dropped(tmp_path):
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    lin.save_partial(0, 3, {"model.safetensors": b"a"}, {})
    lin.save_partial(1, 2, {"model.safetensors": b"b"}, {})
    _commit(lin, 0)  # killed before its partial checkpoint was removed
    lin.clear_partials_before(1)
    assert lin.load_partial(0) is None and lin.load_partial(1) is not None
