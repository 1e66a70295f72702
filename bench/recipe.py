"""The paper's training recipe, reimplemented plainly: the baseline of
`lth-sweep bench`'s `reference_speedup`, and the reference the tests hold the
engine's fast paths to.

What makes it the reference (and slow on small subsets), as in the paper's code:
  * data: a Dataset of PIL images through torchvision transforms, a new
    DataLoader iteration (and worker processes, if any) every epoch;
  * masks: torch.nn.utils.prune (a forward pre-hook multiplies weight_orig by
    the mask on every forward);
  * evaluation on the full test split after every epoch;
  * a checkpoint (model + optimizer, torch.save) after every epoch.
The IMP definition is the project's (global L1 over conv weights, rate of
the remaining weights, rewinding to `rewind_epoch`), so both sides compute
the same lineage.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from workers import data
from workers import pruning
from workers.models import build_model
from workers.spec import TrialSpec


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from torchvision.transforms.functional import to_pil_image
        return self.transform(to_pil_image(self.x[i])), int(self.y[i])


def transforms(name: str, info: data.DatasetInfo, train: bool):
    from torchvision import transforms as tv_transforms
    tail = [tv_transforms.ToTensor(), tv_transforms.Normalize(info.mean, info.std)]
    if not train or name == "none":
        return tv_transforms.Compose(tail)
    S = info.image_size
    basic = [tv_transforms.RandomCrop(S, padding=data.augment.padding_for(S)), tv_transforms.RandomHorizontalFlip()]
    if name != "basic":
        raise ValueError("the reference recipe implements the `none` and `basic` augmentations")
    return tv_transforms.Compose(basic + tail)


def hook_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Masks as the paper's code applies them: prune reparametrisation + forward hooks."""
    modules = dict(model.named_modules())
    for name, m in masks.items():
        mod = modules[name.rsplit(".", 1)[0]]
        if prune.is_pruned(mod):
            prune.remove(mod, "weight")
        prune.custom_from_mask(mod, "weight", m.to(mod.weight.device))


def global_l1_prune(model: torch.nn.Module, names: list[str], rate: float) -> dict[str, torch.Tensor]:
    """torch.nn.utils.prune's global L1 pruning of `rate` of the remaining weights."""
    modules = dict(model.named_modules())
    params = [(modules[n.rsplit(".", 1)[0]], "weight") for n in names]
    remaining = sum(int(getattr(mod, "weight_mask", torch.ones(1)).sum()) if prune.is_pruned(mod)
                    else mod.weight.numel() for mod, _ in params)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=round(rate * remaining))
    return {n: mod.weight_mask.bool().clone() for n, (mod, _) in zip(names, params)}


def _load_dense(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a plain state dict into a model whose pruned weights live in weight_orig."""
    own = model.state_dict()
    model.load_state_dict({(k[:-len("weight")] + "weight_orig" if k not in own and k.endswith("weight")
                            else k): v for k, v in state.items()}, strict=False)


def _density(model: torch.nn.Module, names: list[str]) -> float:
    bufs = dict(model.named_buffers())
    modules = dict(model.named_modules())
    kept = sum(int(bufs[n + "_mask"].sum()) if n + "_mask" in bufs else
               modules[n.rsplit(".", 1)[0]].weight.numel() for n in names)
    return kept / sum(modules[n.rsplit(".", 1)[0]].weight.numel() for n in names)


def evaluate(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for xb, yb in loader:
            correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
            total += len(yb)
    return correct / max(1, total)


def run_reference(spec: TrialSpec, train: data.Split, test: data.Split, info: data.DatasetInfo, out_dir: str,
                  device: torch.device, num_workers: int = 0) -> list[dict]:
    """The lineage of `spec` the reference way; returns one metrics dict per round."""
    t, pr = spec.train, spec.prune
    tr_idx, _ = data.stratified_split(train.y, fraction=spec.data.fraction,
                                   images_per_class=spec.data.images_per_class, seed=spec.seed)
    train_ds = PILDataset(train.x[tr_idx], train.y[tr_idx], transforms(spec.data.augmentation, info, True))
    test_ds = PILDataset(test.x, test.y, transforms("none", info, False))
    torch.manual_seed(spec.seed)
    model = build_model(spec.model.arch, num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size, width=spec.model.width).to(device)
    names = pruning.prunable_names(model, spec.prune.prunable)
    rewind, rows = None, []
    os.makedirs(out_dir, exist_ok=True)
    for k in range(spec.num_rounds):
        t0 = time.perf_counter()
        if k > 0:
            global_l1_prune(model, names, pr.rate)
            _load_dense(model, rewind)
        opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        first = 0 if k == 0 else pr.rewind_epoch
        for epoch in range(first, t.epochs):
            for g in opt.param_groups:
                g["lr"] = 0.5 * t.lr * (1 + math.cos(math.pi * epoch / t.epochs))
            model.train()
            for xb, yb in torch.utils.data.DataLoader(train_ds, batch_size=t.batch_size, shuffle=True,
                                                      num_workers=num_workers):
                loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
            test_acc = evaluate(model, torch.utils.data.DataLoader(test_ds, batch_size=t.batch_size,
                                                                   num_workers=num_workers), device)
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                       os.path.join(out_dir, f"round{k}.pt"))
            if k == 0 and epoch + 1 == pr.rewind_epoch:
                rewind = {n: v.detach().clone() for n, v in model.state_dict().items()}
        if k == 0 and rewind is None:
            rewind = {n: v.detach().clone() for n, v in model.state_dict().items()}
        rows.append({"round": k, "density": _density(model, names), "test_acc": test_acc,
                     "wall_s": time.perf_counter() - t0})
    return rows
