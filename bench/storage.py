"""storage_per_lineage_x_dense: what one finished lineage keeps on disk, in dense checkpoints.

    storage_per_lineage_x_dense  bytes of every file of every committed round
                                 (weights, mask, rewind state, predictions,
                                 metrics, manifests) of a finished 17-round
                                 (imp rounds=16) full-width ResNet-18 lineage /
                                 bytes of one dense fp32 weights checkpoint of it

The lineage is the real thing end to end (run_lineage: RoundRun.commit writes
the files, workers/checkpoint.py encodes the weights), on a tiny synthetic
CIFAR-10-shaped dataset written in CIFAR-10's own on-disk format, so it runs
in under a minute on a CPU: 4 images per class (one SGD step an epoch), 2 epochs with
rewinding to epoch 1, so round 0 trains 2 epochs and every later round 1. Its weights are therefore
near their initialisation (kaiming-uniform-like values, every mantissa bit
random): they compress like trained weights or worse, so the ratio measured
here is an upper bound for a trained lineage of the same schedule.

Measured (2-core CPU VM, 26 s idle; 650 s while other jobs shared it): 5.60, of which the sparse weights 4.06,
round 0's dense rewind state 1.00, the 17 bit-packed masks 0.53, predictions,
metrics and manifests 0.004; the same lineage in the dense format before: 18.53.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict

import torch

from workers import checkpoint
from workers import data
from workers.data.cifar import write_folder
from workers.lineage import run_lineage
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import MANIFEST, SweepStore
from workers.train import save_tensors


def bench_storage(smoke: bool = False) -> dict:
    """The bytes a finished lineage keeps, over one dense checkpoint (smoke: width
    0.25 and 3 rounds, to check the plumbing)."""
    width, rounds = (0.25, 3) if smoke else (1.0, 16)
    per_class, train_per_class, test_per_class = 4, 5, 4
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    n_train, n_test = 10 * train_per_class, 10 * test_per_class
    train = data.Split(torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8),
                       torch.arange(n_train) % 10)
    test = data.Split(torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8),
                      torch.arange(n_test) % 10)
    spec = TrialSpec(DataSpec("cifar10", images_per_class=per_class), model=ModelSpec(width=width),
                     train=TrainSpec(epochs=2), prune=PruneSpec(rounds=rounds, rewind_epoch=1))
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "data")
        write_folder("cifar10", root, train, test)
        lin = SweepStore(os.path.join(d, "runs"), "b").lineage(spec.trial_id)
        t0 = time.perf_counter()
        rows = run_lineage(spec, lin, RunOptions(data_root=root, device=device))
        lineage_s = time.perf_counter() - t0
        kinds, per_round = defaultdict(int), []
        for k in range(spec.num_rounds):
            folder = lin.round_dir(k)
            sizes = {n: os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
                     if not n.startswith(".")}
            for n, b in sizes.items():
                kinds[n] += b
            per_round.append(sum(sizes.values()))
        t0 = time.perf_counter()
        state, _ = checkpoint.read_weights(lin, spec.num_rounds - 1)
        read_s = time.perf_counter() - t0
        dense = len(save_tensors(state))  # one dense fp32 checkpoint: the old weights.safetensors
    total = sum(per_round)
    # The same lineage in the format before workers/checkpoint.py: a dense state per round.
    before = total - kinds[checkpoint.WEIGHTS] + spec.num_rounds * dense
    return {"storage_per_lineage_x_dense": round(total / dense, 3),
            "_storage": {
                "bytes_by_file": dict(sorted(kinds.items())), "bytes_total": total, "dense_checkpoint_bytes": dense,
                "x_dense_by_file": {n: round(b / dense, 3) for n, b in sorted(kinds.items())},
                "bytes_by_round": per_round,
                "density_by_round": [round(r["density"], 4) for r in rows],
                "dense_format_x_dense": round(before / dense, 3),
                "lineage_s": round(lineage_s, 1), "read_last_round_s": round(read_s, 3),
                "run": f"run_lineage, resnet18 width {width}, {spec.num_rounds} rounds (imp rounds={rounds}, rate 0.2), "
                       f"synthetic CIFAR-10-shaped images on disk: {per_class} per class trained, "
                       f"{test_per_class} per class test, epochs 2, rewind_epoch 1 (round 0 trains 2 epochs, "
                       f"later rounds 1), on {device}",
                "values": "near initialisation (a few SGD steps): they compress like trained weights or worse",
                "files": f"every file of every committed round, {MANIFEST} included; the dense checkpoint is "
                         f"the full state (weights, BatchNorm statistics, head) as dense fp32 safetensors"}}
