"""The synthetic members bench/fused.py times fused and bench/packed.py times as
packed processes (and bench/gpu_check.py checks): K solo Trainers of a case."""
from __future__ import annotations

import torch

from workers import data
from workers import pruning
from workers.methods import trial_model
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.train import Prepared, Trainer

CASES = {
    # name: (dataset whose shape/normalisation is used, images, batch)
    "quickstart": ("digits", 120, 50),
    "cifar": ("cifar10", 500, 100),
}



def make_members(case: str, k: int, width: float, device: torch.device, epochs: int, arch: str = "resnet18",
                 method: str = "imp", bf16: bool = True) -> list[Trainer]:
    """K solo Trainers of `case` on synthetic data, ready to train round 1
    (`bf16`: autocast on CUDA, as trials train by default)."""
    dataset, n, batch = CASES[case]
    info = data.dataset_info(dataset)
    g = torch.Generator().manual_seed(12345)
    x = torch.randint(0, 256, (n, info.channels, info.image_size, info.image_size), generator=g,
                      dtype=torch.uint8)
    y = torch.randint(0, info.num_classes, (n,), generator=g)
    empty_x, empty_y = x[:0], y[:0]
    opts = RunOptions(device=str(device))
    out = []
    for seed in range(k):
        spec = TrialSpec(DataSpec(dataset, images_per_class=max(1, n // info.num_classes),
                                  augmentation="basic"),
                         model=ModelSpec(arch, width=width),
                         train=TrainSpec(epochs=epochs, batch_size=batch, lr=0.05, bf16=bf16),
                         prune=PruneSpec(method=method), seed=seed)
        prep = Prepared(info=info, x_train=x.to(device), y_train=y.to(device), x_val=empty_x.to(device),
                        y_val=empty_y.to(device), x_test=empty_x.to(device), y_test=empty_y.to(device),
                        augment=data.make_augment("basic", info), device=device)
        model = trial_model(spec, info, opts).to(device)
        masks = pruning.full_masks(model, pruning.prunable_names(model))
        masks = pruning.random_prune(masks, 0.2, torch.Generator().manual_seed(seed))  # an IMP round 1
        t = Trainer(spec, prep, model, masks, opts)
        t.masker.apply()
        out.append(t)
    return out
