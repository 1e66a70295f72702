"""The paper's training recipe, reimplemented plainly: the baseline of
`lth-sweep bench`'s `recipe_speedup` and `engine_speedup_equal_work`
(bench/reference.py), and the reference the tests hold the engine's fast
paths to.

What makes it the reference (and slow on small subsets), as in the paper's code:
  * data: a Dataset of PIL images through torchvision transforms, a new
    DataLoader iteration (and worker processes, if any) every epoch;
  * masks: torch.nn.utils.prune (a forward pre-hook multiplies weight_orig by
    the mask on every forward);
  * evaluation on the full test split after every epoch;
  * a checkpoint (model + optimizer, torch.save) after every epoch.
The last two are the released code's cadence and `run_reference`'s default;
`eval_every` / `checkpoint_every` / `eval_splits` change them (0: only at the
end of each round), so the same recipe can do exactly the evaluations and
checkpoints the engine does (engine_speedup_equal_work).
The IMP definition is the project's (global L1 over conv weights, rate of
the remaining weights, rewinding to `rewind_epoch`), so both sides compute
the same lineage.
"""
from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the reference evaluates and checkpoints (see run_reference); the
    default is the released code's."""
    eval_every: int = 1
    checkpoint_every: int = 1
    eval_splits: tuple[str, ...] = ("test",)


RELEASED = Cadence()


def run_reference(spec: TrialSpec, train: data.Split, test: data.Split, info: data.DatasetInfo, out_dir: str,
                  device: torch.device, num_workers: int = 0, cadence: Cadence = RELEASED) -> list[dict]:
    """The lineage of `spec` the reference way; returns one metrics dict per round.

    Evaluates on `eval_splits` (of "train": the training subset, "val": the
    engine's validation images, "test") after every `eval_every`-th epoch and
    checkpoints after every `checkpoint_every`-th (epochs counted as the engine
    counts them, from 1 at the start of round 0); 0: neither mid-round. Both
    also happen at the end of every round (after its last epoch, as in the
    released code, whose cadence (1, 1, test) is the default). Each row says
    what its round did: `epochs` trained, `evaluations`, `eval_images` (images
    per evaluation), `checkpoints`, and the seconds `eval_s`, `checkpoint_s`
    of its `wall_s` they took."""
    t, pr = spec.train, spec.prune
    eval_every, checkpoint_every, eval_splits = cadence.eval_every, cadence.checkpoint_every, cadence.eval_splits
    tr_idx, va_idx = data.stratified_split(train.y, fraction=spec.data.fraction,
                                           images_per_class=spec.data.images_per_class, seed=spec.seed,
                                           val_per_class=spec.eval.val_per_class if "val" in eval_splits else 0)
    train_ds = PILDataset(train.x[tr_idx], train.y[tr_idx], transforms(spec.data.augmentation, info, True))
    plain = transforms("none", info, False)
    eval_ds = {"train": PILDataset(train.x[tr_idx], train.y[tr_idx], plain),
               "val": PILDataset(train.x[va_idx], train.y[va_idx], plain),
               "test": PILDataset(test.x, test.y, plain)}
    eval_ds = {s: eval_ds[s] for s in eval_splits}
    eval_images = sum(len(ds) for ds in eval_ds.values())
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
        accs, evaluations, checkpoints, done = {}, 0, 0, {}
        spent = {"eval": 0.0, "ckpt": 0.0}

        def evaluate_all():
            t1 = time.perf_counter()
            out = {f"{s}_acc": evaluate(model, torch.utils.data.DataLoader(ds, batch_size=t.batch_size,
                                                                           num_workers=num_workers), device)
                   for s, ds in eval_ds.items()}
            spent["eval"] += time.perf_counter() - t1
            return out

        def save(epoch):
            t1 = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                       os.path.join(out_dir, f"round{k}.pt"))
            spent["ckpt"] += time.perf_counter() - t1

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
            done = {}
            if eval_every and (epoch + 1) % eval_every == 0:
                accs, done["eval"] = evaluate_all(), True
                evaluations += 1
            if checkpoint_every and (epoch + 1) % checkpoint_every == 0:
                save(epoch)
                done["ckpt"] = True
                checkpoints += 1
            if k == 0 and epoch + 1 == pr.rewind_epoch:
                rewind = {n: v.detach().clone() for n, v in model.state_dict().items()}
        # The end of the round (for the released cadence, its last epoch did both already;
        # a round of no epochs is evaluated and saved once, as the engine commits it).
        if not done.get("eval"):
            accs = evaluate_all()
            evaluations += 1
        if not done.get("ckpt"):
            save(t.epochs - 1)
            checkpoints += 1
        if k == 0 and rewind is None:
            rewind = {n: v.detach().clone() for n, v in model.state_dict().items()}
        rows.append({"round": k, "density": _density(model, names), **accs, "epochs": t.epochs - first,
                     "evaluations": evaluations, "eval_images": eval_images, "checkpoints": checkpoints,
                     "eval_s": spent["eval"], "checkpoint_s": spent["ckpt"], "wall_s": time.perf_counter() - t0})
    return rows
