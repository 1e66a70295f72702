"""`run --tracker`: TensorBoard, MLflow and W&B (offline) get one run per lineage,
each committed round one step, read back with each tracker's own reader."""
import glob
import os
import struct

import pytest

from tests.integration.conftest import SHARED_ROUNDS

pytestmark = pytest.mark.ray

ROUNDS = SHARED_ROUNDS


@pytest.fixture(scope="module")
def tracked(swept):
    """The shared sweep ran with all three trackers (conftest.py)."""
    d, _ = swept
    base = d / "store" / "mine" / "trackers"
    trials = sorted(os.listdir(d / "store" / "mine" / "trials"))
    assert len(trials) == 2
    return base, trials


def test_tensorboard_event_files_hold_every_round(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    base, trials = tracked
    for tid in trials:
        acc = EventAccumulator(str(base / "tensorboard" / tid))
        acc.Reload()
        tags = [t for t in acc.Tags()["scalars"] if t.endswith("test_acc")]
        assert tags, acc.Tags()
        events = acc.Scalars(tags[0])
        assert [e.step for e in events] == list(range(1, ROUNDS + 1))
        assert all(0 <= e.value <= 1 for e in events)


def test_mlflow_has_a_run_per_lineage_with_its_spec_and_rounds(tracked):
    from mlflow.tracking import MlflowClient
    base, trials = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{base / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mine")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["trial_id"] for r in runs) == trials
    for run in runs:
        assert run.data.params["dataset"] == "digits" and run.data.params["fraction"] == "0.2"
        history = client.get_metric_history(run.info.run_id, "test_acc")
        assert len(history) == ROUNDS and all(0 <= m.value <= 1 for m in history)


def _wandb_records(path):
    """The records of a W&B transaction log (.wandb): a 7-byte header, then
    LevelDB-log framed protobuf Records (crc, length, type; 32 KiB blocks)."""
    data, pos, block, buf = open(path, "rb").read(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            pos += left - 7
            continue
        chunk, pos = data[pos:pos + n], pos + n
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def test_wandb_offline_run_files_hold_every_round(tracked):
    from wandb.proto import wandb_internal_pb2 as pb
    base, trials = tracked
    for tid in trials:
        (log,) = glob.glob(str(base / "wandb" / tid / "wandb" / "offline-run-*" / "run-*.wandb"))
        steps = []
        for raw in _wandb_records(log):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                # Newer W&B writes the key as nested_key ([key]); older ones as key.
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                if "round" not in items:  # W&B's own bookkeeping rows (_runtime at the end)
                    continue
                steps.append((int(items["round"]), float(items["test_acc"])))
        assert [k for k, _ in steps] == list(range(ROUNDS)) and all(0 <= a <= 1 for _, a in steps)
