"""Hand-committed rounds with known numbers, for the results, status and query tests."""
from __future__ import annotations

import os


def spec_dict(dataset="cifar10", fraction=0.01, ipc=None, aug="none", method="imp", seed=0,
              rounds=3):
    return {"data": {"dataset": dataset, "fraction": fraction, "images_per_class": ipc,
                     "augmentation": aug},
            "model": {"arch": "resnet18", "width": 1.0, "init": "random"},
            "train": {"epochs": 4, "batch_size": 100, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 0.0005, "schedule": "cosine", "bf16": True,
                      "channels_last": True},
            "prune": {"method": method, "rounds": rounds, "rate": 0.2, "rewind_epoch": 2,
                      "prunable": "conv"},
            "seed": seed}


def metrics(store, tid, k, val=0.5, test=0.4, density=None, wall=10.0, **over):
    """The keys of lineage._train_round's metrics, with fake values."""
    d = 0.8 ** k if density is None else density
    m = {"trial_id": tid, "round": k, "density": d, "train_acc": 0.9, "val_acc": val,
         "test_acc": test, "epochs": 4 if k == 0 else 2, "wall_s": wall, "images_per_s": 1000.0,
         "node": "node-a", "gpu_ids": "0", "device": "cpu",
         "started_at": "2024-05-01T10:00:00.000+00:00",
         "finished_at": "2024-05-01T10:00:10.000+00:00",
         "checkpoint_uri": store.lineage(tid).round_uri(k),
         "layers": [{"layer": "conv1.weight", "density": d, "numel": 1728},
                    {"layer": "layer1.0.conv1.weight", "density": d, "numel": 36864}],
         "history": [{"epoch": 1, "train_loss": 2.0, "train_acc_running": 0.2, "lr": 0.1}]}
    m.update(over)
    return m


def commit(store, tid, k, spec=None, **kw):
    spec = spec or spec_dict()
    lin = store.lineage(tid)
    lin.write_spec(spec)
    lin.commit_round(k, {"weights.safetensors": b"w%d" % k}, metrics(store, tid, k, **kw), spec)


def shard_files(store, kind="results"):
    return sorted(os.listdir(store.path(kind)))
