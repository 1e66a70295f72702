"""The engine against a bare PyTorch loop on the same tensors.

    train_loop_ratio     engine masked loop images/s / bare PyTorch loop images/s
    epoch_overhead_frac  (engine epoch - bare epoch) / bare epoch at 500 training images
    eval_train_ratio     end-of-round evaluation / training time of a 200-epoch round at 500 images
    checkpoint_frac      round commit (encode, hash, write, manifest) / 200-epoch round, at density 0.5
"""
from __future__ import annotations

import os
import tempfile

import torch
import torch.nn.functional as F

from workers import checkpoint
from workers import data
from workers import pruning
from workers import train
from workers.models import build_model
from workers.spec import DataSpec, ModelSpec, TrainSpec, TrialSpec
from workers.store import SweepStore

from .common import best_time, sync


def setup(n_train: int, width: float, device, n_eval: int = 0):
    """A CIFAR-shaped lineage round (synthetic uint8 images) in the engine's
    own structures, with a mask at density 0.5 as in a mid-lineage round."""

    g = torch.Generator().manual_seed(0)
    info = data.dataset_info("cifar10")
    x = torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, 10, (n_train,), generator=g).to(device)
    xe = torch.randint(0, 256, (max(n_eval, 1), 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    ye = torch.randint(0, 10, (max(n_eval, 1),), generator=g).to(device)
    spec = TrialSpec(DataSpec("cifar10", fraction=0.01), model=ModelSpec(width=width),
                     train=TrainSpec(epochs=200))
    prep = train.Prepared(info=info, x_train=x, y_train=y, x_val=xe, y_val=ye, x_test=xe, y_test=ye,
                      augment=data.make_augment("none", info), device=device)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=width).to(device)
    names = pruning.prunable_names(model)
    masks = pruning.global_magnitude_prune(model, pruning.full_masks(model, names), 0.5)
    return spec, prep, model, masks


def _bare_epoch(model, opt, prep, bs, device, autocast, channels_last):
    """The baseline: the plainest correct loop over the same tensors."""
    x, y, info = prep.x_train, prep.y_train, prep.info
    model.train()
    perm = torch.randperm(x.shape[0], device=x.device)
    for b in range(0, x.shape[0], bs):
        idx = perm[b:b + bs]
        xb = data.normalize(x[idx], info)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)


def bench_engine(width: float, repeats: int = 3, sizes: tuple = (2000, 500, 10000)) -> dict:
    """train_loop_ratio, epoch_overhead_frac, eval_train_ratio, checkpoint_frac."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {}
    n_loop, n_epoch, n_eval = sizes
    for n, key in ((n_loop, "loop"), (n_epoch, "epoch")):
        spec, prep, model, masks = setup(n, width, device)
        trainer = train.Trainer(spec, prep, model, masks)
        bm = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=width).to(device)
        if trainer.channels_last:
            bm.to(memory_format=torch.channels_last)
        bopt = torch.optim.SGD(bm.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def engine():
            trainer.train_epoch(1, 3)
            sync(device)

        def bare():
            _bare_epoch(bm, bopt, prep, 100, device, trainer.autocast, trainer.channels_last)

        engine(), bare()  # warm-up (allocator, kernels, momentum buffers)
        # Interleave so background load hits both sides alike.
        e_s = b_s = float("inf")
        for _ in range(repeats):
            e_s = min(e_s, best_time(engine, 1))
            b_s = min(b_s, best_time(bare, 1))
        out[key] = (e_s, b_s)
    e_s, b_s = out["loop"]
    res = {"train_loop_ratio": round(b_s / e_s, 4)}
    e5, b5 = out["epoch"]
    res["epoch_overhead_frac"] = round(max(0.0, e5 - b5) / b5, 4)

    # Evaluation as the engine does it at the end of a round: train subset,
    # validation split (10% of CIFAR-10's training split) and the 10k test set.
    spec, prep, model, masks = setup(n_epoch, width, device, n_eval=n_eval)
    trainer = train.Trainer(spec, prep, model, masks)
    xv, yv = prep.x_test[:n_eval // 2], prep.y_test[:n_eval // 2]

    def evaluate():
        trainer.accuracy(prep.x_train, prep.y_train)
        trainer.accuracy(xv, yv)
        trainer.accuracy(prep.x_test, prep.y_test)

    evaluate()
    eval_s = best_time(evaluate, repeats)
    round_train_s = e5 * 200
    res["eval_train_ratio"] = round(eval_s / round_train_s, 4)

    # The commit of one round: the same files and manifest the engine writes
    # (workers/checkpoint.py: the weights the mask keeps, exactly), and the read back.
    trainer.masker.apply()  # the pruned weights are exact zeros, as in a trained round
    with tempfile.TemporaryDirectory() as d:
        lin = SweepStore(d, "bench").lineage("0" * 16)
        state = train.model_state(model)

        def commit():
            files = {**checkpoint.round_files(state, masks), "metrics.json": b"{}"}
            lin.commit_round(1, files, {"round": 1}, spec.to_dict())

        commit()
        ckpt_s = best_time(commit, repeats)
        read_s = best_time(lambda: checkpoint.read_weights(lin, 1), repeats)
        back, _ = checkpoint.read_weights(lin, 1)
        exact = all(torch.equal(checkpoint.bits(back[n]), checkpoint.bits(state[n])) for n in state)
        sizes = {n: os.path.getsize(os.path.join(lin.round_dir(1), n))
                 for n in (checkpoint.WEIGHTS, checkpoint.MASK)}
    weights_bytes = sum(v.numel() * v.element_size() for v in state.values())
    prunable = sum(m.numel() for m in masks.values())
    res["checkpoint_frac"] = round(ckpt_s / round_train_s, 5)
    res["_detail"] = {
        "width": width, "device": str(device),
        "loop_images_per_s": {"engine": round(n_loop / e_s, 1), "bare": round(n_loop / b_s, 1)},
        "epoch_500_s": {"engine": round(e5, 4), "bare": round(b5, 4)},
        "eval_s": round(eval_s, 4), "commit_s": round(ckpt_s, 4), "read_s": round(read_s, 4),
        "round_bytes": sizes, "read_back_exact": exact,
        "size_budget_bytes": int(1.05 * weights_bytes + prunable / 8),
        "size_ok": sum(sizes.values()) <= 1.05 * weights_bytes + prunable / 8,
    }
    return res
