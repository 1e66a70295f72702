"""reference_speedup: the engine against the recipe of the paper's released code.

The reference (bench/recipe.py) is a PIL DataLoader, a test-set evaluation
and a checkpoint every epoch, and `torch.nn.utils.prune` hook masks; the engine
runs the same lineage end to end (run_lineage, default options).
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from workers import data
from workers.data.cifar import write_folder
from workers.lineage import run_lineage
from .recipe import run_reference
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore


def bench_reference(width: float, epochs: int = 6, rounds: int = 2, per_class: int = 50,
                    train_per_class: int = 200, test_per_class: int = 999) -> dict:
    """The same lineage of `per_class` CIFAR-shaped images per class (50: 1% of
    CIFAR-10) by the engine (run_lineage, defaults) and by the reference recipe."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    info = data.dataset_info("cifar10")
    n_train, n_test = 10 * train_per_class, 10 * test_per_class
    # Synthetic images in CIFAR-10's real file layout: only shapes and counts matter for time.
    train = data.Split(torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.arange(n_train) % 10)
    test = data.Split(torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8),
                   torch.arange(n_test) % 10)
    spec = TrialSpec(DataSpec("cifar10", images_per_class=per_class, augmentation="basic"),
                     model=ModelSpec(width=width), train=TrainSpec(epochs=epochs),
                     prune=PruneSpec(rounds=rounds, rewind_epoch=1))
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "data")
        write_folder("cifar10", root, train, test)
        t0 = time.perf_counter()
        rows = run_lineage(spec, SweepStore(os.path.join(d, "runs"), "b").lineage(spec.trial_id),
                           RunOptions(data_root=root, device=str(device)))
        engine_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = run_reference(spec, train, test, info, os.path.join(d, "ref"), device)
        ref_s = time.perf_counter() - t0
    return {"reference_speedup": round(ref_s / engine_s, 3),
            "_reference": {"engine_s": round(engine_s, 1), "reference_s": round(ref_s, 1),
                           "lineage": f"{per_class} images per class ({10 * per_class} images), {spec.num_rounds} rounds, "
                                      f"{epochs} epochs, rewind 1, width {width}, batch 100; {n_test} test images",
                           "densities": [round(r["density"], 4) for r in rows],
                           "reference_densities": [round(r["density"], 4) for r in ref]}}
