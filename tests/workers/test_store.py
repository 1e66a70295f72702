"""The storage layout and the atomic round commit: manifests, damage, partial checkpoints."""
import os

import pytest

from workers.store import CorruptRound, StorageError, SweepStore, check_name


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
@pytest.mark.parametrize("target", ["weights.safetensors", "MANIFEST.json"])
def test_a_damaged_round_is_never_trusted(tmp_path, target, damage):
    """A damaged data file fails its sha256 check; a damaged manifest (torn, or
    valid JSON whose content changed) makes the round uncommitted."""
    lin = SweepStore(str(tmp_path), "s").lineage("abc")
    _commit(lin, 0)
    p = f"{lin.round_dir(0)}/{target}"
    raw = open(p, "rb").read()
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif target == "MANIFEST.json":
        raw = raw.replace(b'"val_acc": 0.5', b'"val_acc": 0.9')
    else:
        raw = bytes([raw[0] ^ 1]) + raw[1:]
    open(p, "wb").write(raw)
    if target == "MANIFEST.json":
        assert lin.read_manifest(0) is None and lin.committed_prefix() == 0
    else:
        with pytest.raises(CorruptRound):
            lin.load_round(0, ["weights.safetensors"])


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
