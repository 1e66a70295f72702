"""The training and evaluation loop of one round, and what it runs on.

    prep = prepare(spec, opts, device)               # the trial's data, on the device
    trainer = Trainer(spec, prep, model, masks, opts)
    trainer.train_epoch(round_k, epoch)              # one epoch, seeded by (seed, round, epoch)
    trainer.evaluate(("train", "val", "test"), keep=True)

No storage and no Ray here: workers/round.py drives a Trainer through a round
(resume, checkpoints, commit), workers/fused.py drives several at once.

Every epoch reseeds from (seed, round, epoch) (workers/rng.py), so resuming at
an epoch boundary computes the same bits as never stopping (on CPU).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from safetensors.torch import save as st_save

from workers import data as D
from workers import pruning as P
from workers.losses import LOSSES
from workers.methods import get_method
from workers.models import model_state  # noqa: F401  (re-exported: the state a round commits)
from workers.rng import seed_for
from workers.spec import RunOptions, TrialSpec

log = logging.getLogger("lth_sweep.train")

EVAL_BATCH = 1000
SCHEDULES = ("cosine", "constant")  # the learning rate over a round's epochs (Trainer.lr_at)

def pick_device(opts: RunOptions, context: dict) -> torch.device:
    """RunOptions.device, else $LTH_DEVICE (tests pin the CPU with it: bit-exact
    checks are CPU facts), else CUDA when present, else the CPU."""
    if opts.device:
        return torch.device(opts.device)
    if os.environ.get("LTH_DEVICE"):
        return torch.device(os.environ["LTH_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda")
    if context.get("gpu_ids"):
        # Fake-GPU test clusters (and misconfigured nodes) land here.
        log.warning("trial was given GPU ids %s but CUDA is not available: training on CPU",
                    context["gpu_ids"])
    return torch.device("cpu")


@dataclass
class Prepared:
    """Everything a round needs that does not change between rounds."""
    info: D.DatasetInfo
    x_train: torch.Tensor  # uint8, on device
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    augment: Callable
    device: torch.device
    # Held-out images per class (the validation budget), None when none exist.
    val_per_class: Optional[int] = None


def prepare(spec: TrialSpec, opts: RunOptions, device: torch.device,
            legacy: Optional[dict] = None) -> Prepared:
    """The trial's data on `device`. `legacy` is the validation rule of a
    lineage started before the budget was per class (spec.legacy_validation):
    such a lineage keeps measuring on the images it started with."""
    info, train, test = D.load_dataset(spec.data.dataset, opts.data_root, **spec.data.params())
    tr_idx, va_idx = D.stratified_split(
        train.y, fraction=spec.data.fraction, images_per_class=spec.data.images_per_class, seed=spec.seed,
        val_per_class=spec.eval.val_per_class,
        val_fraction=legacy["val_fraction"] if legacy and legacy["selection"] == "val" else None)
    on = device if train.x.shape[0] <= opts.max_device_images else torch.device("cpu")
    return Prepared(
        info=info,
        x_train=train.x[tr_idx].to(on), y_train=train.y[tr_idx].to(device),
        x_val=train.x[va_idx].to(on), y_val=train.y[va_idx].to(device),
        x_test=test.x.to(on), y_test=test.y.to(device),
        augment=D.make_augment(spec.data.augmentation, info), device=device,
        val_per_class=D.held_out_per_class(train.y[va_idx], info.num_classes))


def _inputs(xb: torch.Tensor, info: D.DatasetInfo, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = D.normalize(xb.to(device, non_blocking=True), info)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def accuracy(forward, x: torch.Tensor, y: torch.Tensor, info: D.DatasetInfo, device: torch.device,
             autocast: bool = False, channels_last: bool = False) -> Optional[float]:
    """Top-1 accuracy in large batches with one device sync at the end (the
    caller puts the model in eval mode); None for an empty split."""
    if x.shape[0] == 0:
        return None
    correct = torch.zeros((), device=device, dtype=torch.long)
    for b in range(0, x.shape[0], EVAL_BATCH):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = forward(_inputs(x[b:b + EVAL_BATCH], info, device, channels_last))
        correct += (out.argmax(1) == y[b:b + EVAL_BATCH].to(device)).sum()
    return int(correct) / max(1, x.shape[0])


def _batch_norms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, forward, x: torch.Tensor, info: D.DatasetInfo,
                   device: torch.device, autocast: bool = False, channels_last: bool = False) -> None:
    """Replace BatchNorm's running statistics with those of `x` (the training
    subset, unaugmented): reset, then a no-grad train-mode pass with a
    cumulative average (momentum None). The running averages of a short round
    lag the weights they describe; this measures the network that was trained."""
    bns = _batch_norms(model)
    if not bns or x.shape[0] == 0:
        return
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for b in range(0, x.shape[0], EVAL_BATCH):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                forward(_inputs(x[b:b + EVAL_BATCH], info, device, channels_last))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


class Trainer:
    """The training/evaluation loop of one round, with state that can be saved."""

    def __init__(self, spec: TrialSpec, prep: Prepared, model: torch.nn.Module, masks: dict,
                 opts: Optional[RunOptions] = None):
        self.spec, self.prep, self.model = spec, prep, model
        opts = opts or RunOptions()
        # Only the forward is compiled: state dicts, masks and optimizer keep
        # addressing the plain module (no `_orig_mod.` prefixes in checkpoints).
        self.forward = torch.compile(model, backend=opts.compile_backend) if opts.compile else model
        t = spec.train
        cuda = prep.device.type == "cuda"
        self.autocast = cuda and t.bf16
        self.channels_last = cuda and t.channels_last
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                                   weight_decay=t.weight_decay)
        self.masker = P.MaskApplier(model, masks, self.opt)
        # The dense round has nothing to mask: skip the per-step multiply.
        self.sparse = P.density(masks) < 1.0
        self.names = {p: n for n, p in model.named_parameters()}
        self.loss = LOSSES[get_method(spec.prune.method).loss]

    def lr_at(self, epoch: int) -> float:
        t = self.spec.train
        if t.schedule == "constant":
            return t.lr
        return 0.5 * t.lr * (1 + math.cos(math.pi * epoch / t.epochs))

    def _inputs(self, xb: torch.Tensor) -> torch.Tensor:
        return _inputs(xb, self.prep.info, self.prep.device, self.channels_last)

    def train_epoch(self, round_k: int, epoch: int) -> dict:
        """One epoch; returns {loss, acc, images} (one device sync at the end)."""
        p, model, t = self.prep, self.model, self.spec.train
        seed = seed_for(self.spec.seed, round_k, epoch)
        gen = torch.Generator().manual_seed(seed)
        # Augmentation draws on the device the images live on (a large dataset
        # stays on the host: max_device_images), not necessarily the model's.
        on = p.x_train.device
        aug_gen = gen if on.type == "cpu" else torch.Generator(on).manual_seed(seed)
        torch.manual_seed(seed)  # for any op that draws from the global RNG
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(epoch)
        model.train()
        n = p.x_train.shape[0]
        perm = torch.randperm(n, generator=gen).to(p.x_train.device)
        loss_sum = torch.zeros((), device=p.device)
        correct = torch.zeros((), device=p.device, dtype=torch.long)
        for b in range(0, n, t.batch_size):
            idx = perm[b:b + t.batch_size]
            xb = p.augment(p.x_train[idx], aug_gen)
            yb = p.y_train[idx.to(p.y_train.device)]
            with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                out = self.forward(self._inputs(xb))
                loss = self.loss(out, yb, p.info.num_classes)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.sparse:
                self.masker.apply()
            loss_sum += loss.detach() * idx.numel()
            correct += (out.argmax(1) == yb).sum()
        return {"loss": float(loss_sum) / n, "acc": int(correct) / n, "images": n}

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
        self.model.eval()
        return accuracy(self.forward, x, y, self.prep.info, self.prep.device, self.autocast,
                        self.channels_last)

    def recalibrate_bn(self) -> None:
        recalibrate_bn(self.model, self.forward, self.prep.x_train, self.prep.info, self.prep.device,
                       self.autocast, self.channels_last)

    @torch.no_grad()
    def evaluate(self, splits: tuple[str, ...], keep: bool) -> dict[str, Optional[float]]:
        """{split}_acc for each of train/val/test. With `eval.bn_recalibrate`,
        measured after recalibrating BatchNorm on the training subset: kept
        when `keep` (the end of a round: the committed weights are the measured
        ones), else undone (mid-round: training continues from its own state)."""
        p = self.prep
        data = {"train": (p.x_train, p.y_train), "val": (p.x_val, p.y_val), "test": (p.x_test, p.y_test)}
        saved = None
        if self.spec.eval.bn_recalibrate:
            if not keep:
                saved = {k: v.clone() for k, v in self.model.state_dict().items()
                         if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
            self.recalibrate_bn()
        out = {f"{s}_acc": self.accuracy(*data[s]) for s in splits}
        if saved is not None:
            self.model.load_state_dict(saved, strict=False)
        return out

    # --- state ------------------------------------------------------------
    def momentum_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for p, st in self.opt.state.items():
            if "momentum_buffer" in st and st["momentum_buffer"] is not None:
                out[self.names[p]] = st["momentum_buffer"]
        return out

    def load_momentum(self, bufs: dict[str, torch.Tensor]) -> None:
        for p, name in self.names.items():
            if name in bufs:
                self.opt.state[p]["momentum_buffer"] = bufs[name].to(p.device, p.dtype).clone(
                    memory_format=torch.preserve_format)


def save_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
