"""Per-image predictions of committed rounds (workers/predictions.py): the file's
format, the `test_correct` bits, reading them back through the store and the
API, and rounds of older sweeps that have none. What a round commits is
checked against its network in tests/workers/test_round.py."""
from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from orchestrator import api
from orchestrator.results import ResultsError
from workers import predictions as PRED
from workers.lineage import run_lineage
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def test_the_narrowest_type_that_holds_every_class():
    assert [PRED.class_dtype(n) for n in (2, 256, 257, 32768, 32769)] == \
        [np.uint8, np.uint8, np.int16, np.int16, np.int32]
    pred = {"val": np.array([0, 299]), "test": np.array([], np.int64)}
    label = {"val": np.array([1, 299]), "test": np.array([], np.int64)}
    back = PRED.decode(PRED.encode(pred, label, 300))
    assert {a.dtype for a in back.values()} == {np.dtype(np.int16)}
    assert back["val_pred"].tolist() == [0, 299] and back["val_label"].tolist() == [1, 299]
    assert back["test_pred"].shape == (0,)  # an empty split is a file entry too


def test_test_correct_is_little_endian_packed_bits_in_base64():
    pred, label = np.array([3, 1, 2, 0, 5, 5, 5, 5, 9, 0]), np.array([3, 0, 2, 0, 5, 5, 5, 5, 1, 0])
    # right: 1 0 1 1 1 1 1 1 | 0 1 -> bytes 0b11111101, 0b00000010 (first image = lowest bit)
    text = PRED.pack_correct(pred, label)
    assert base64.b64decode(text) == bytes([0b11111101, 0b00000010])
    assert PRED.unpack_correct(text, 10).tolist() == (pred == label).tolist()
    assert PRED.unpack_correct(base64.b64decode(text), 10).tolist() == (pred == label).tolist()
    assert PRED.round_metrics({"test": pred}, {"test": label}) == {"test_images": 10, "test_correct": text}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished two-round lineage (tiny), trained once for the module."""
    root = tmp_path_factory.mktemp("pred")
    spec = TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=0.0625),
                     train=TrainSpec(epochs=1, batch_size=40, lr=0.05), prune=PruneSpec(rounds=1, rewind_epoch=0))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = run_lineage(spec, SweepStore(str(root), "s").lineage(spec.trial_id), RunOptions(device="cpu"))
    finally:
        torch.set_num_threads(n)
    return str(root), spec.trial_id, metrics


def test_the_api_gives_every_held_out_and_test_image_of_a_round(finished):
    root, tid, metrics = finished
    for k in (0, 1):
        df = api.predictions(root, "s", tid, k)
        assert list(df.columns) == ["split", "image", "label", "predicted", "correct"]
        val, test = df[df.split == "val"], df[df.split == "test"]
        assert len(val) == 500 and len(test) == 599 == metrics[k]["test_images"]
        assert test.image.tolist() == list(range(599))
        assert val.correct.mean() == metrics[k]["val_acc"] and test.correct.mean() == metrics[k]["test_acc"]
        assert test.correct.tolist() == PRED.unpack_correct(metrics[k]["test_correct"], 599).tolist()
        assert sorted(test.label.unique()) == list(range(10))
    assert not api.predictions(root, "s", tid, 0).equals(api.predictions(root, "s", tid, 1))


def test_the_api_names_what_is_missing_in_one_line(finished, tmp_path):
    root, tid, _ = finished
    with pytest.raises(ResultsError, match=r"^no trial 'ab00000000000000' with committed rounds in sweep 's'$"):
        api.predictions(root, "s", "ab00000000000000", 0)
    with pytest.raises(ResultsError, match=rf"^trial {tid} has no committed round 5 \(committed: 0, 1\)$"):
        api.predictions(root, "s", tid, 5)
    # A round an older lth-sweep committed: its files and metrics, no predictions.
    old = SweepStore(str(tmp_path), "old").lineage("cd00000000000001")
    old.commit_round(0, {"weights.safetensors": b"w"}, {"round": 0, "test_acc": 0.5}, {})
    assert old.read_predictions(0) is None
    with pytest.raises(ResultsError, match=r"^round 0 of trial cd00000000000001 has no per-image predictions: "
                                           r"it was committed by an lth-sweep older"):
        api.predictions(str(tmp_path), "old", "cd00000000000001", 0)


def test_a_corrupt_predictions_file_is_refused_not_read(finished, tmp_path):
    import shutil
    root, tid, _ = finished
    shutil.copytree(root, tmp_path / "copy")
    lin = SweepStore(str(tmp_path / "copy"), "s").lineage(tid)
    path = f"{lin.round_dir(1)}/predictions.safetensors"
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1  # a flipped bit in the last test prediction
    open(path, "wb").write(bytes(data))
    with pytest.raises(ResultsError, match=rf"^round 1 of trial {tid}: predictions.safetensors fails its sha256 "
                                           r"check \(`lth-sweep verify` names every damaged file\)$"):
        api.predictions(str(tmp_path / "copy"), "s", tid, 1)
    assert len(api.predictions(str(tmp_path / "copy"), "s", tid, 0)) == 1099  # the other round is intact
