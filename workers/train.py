"""The training and evaluation loop of one round, and what it runs on.

    prep = prepare(spec, opts, device)               # the trial's data, on the device
    trainer = Trainer(spec, prep, model, masks, opts)
    trainer.train_epoch(round_k, epoch)              # one epoch, seeded by (seed, round, epoch)
    trainer.evaluate(("train", "val", "test"), keep=True, predict=("val", "test"))

No storage and no Ray here: workers/round.py drives a Trainer through a round
(resume, checkpoints, commit), workers/group.py several at once.

One epoch loop (`run_epoch`) trains every lineage, alone or fused: it owns each
member's epoch stream (`EpochStream`: the seeded data order and augmentation
draws), the learning rate, the losses, the result rows and a member's failures;
a *program* owns a step's arithmetic (`Solo`, or workers/fused.py's
`FusedTrainer`). Every epoch reseeds from (seed, round, epoch), so resuming at
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

from workers import data
from workers import pruning
from workers.inference import Evaluation, _inputs, accuracy, classify, recalibrate_bn
from workers.losses import LOSSES
from workers.methods import get_method
from workers.models import model_state  # noqa: F401  (re-exported: the state a round commits)
from workers.rng import seed_for
from workers.spec import RunOptions, TrialSpec

log = logging.getLogger("lth_sweep.train")

SCHEDULES = ("cosine", "constant")  # the learning rate over a round's epochs (Trainer.lr_at)


def pick_device(opts: RunOptions, where: dict) -> torch.device:
    """RunOptions.device, else $LTH_DEVICE (tests pin the CPU with it: bit-exact
    checks are CPU facts), else CUDA when present, else the CPU."""
    if opts.device:
        return torch.device(opts.device)
    if os.environ.get("LTH_DEVICE"):
        return torch.device(os.environ["LTH_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda")
    if where.get("gpu_ids"):
        # Fake-GPU test clusters (and misconfigured nodes) land here.
        log.warning("trial was given GPU ids %s but CUDA is not available: training on CPU",
                    where["gpu_ids"])
    return torch.device("cpu")


@dataclass
class Prepared:
    """Everything a round needs that does not change between rounds."""
    info: data.DatasetInfo
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
            val_fraction: Optional[float] = None) -> Prepared:
    """The trial's data on `device`. `val_fraction`: the held-out share an old
    lineage keeps measuring on (workers/migrate.py `held_out_fraction`)."""
    info, train, test = data.load_dataset(spec.data.dataset, opts.data_root, **spec.data.params())
    tr_idx, va_idx = data.stratified_split(
        train.y, fraction=spec.data.fraction, images_per_class=spec.data.images_per_class, seed=spec.seed,
        val_per_class=spec.eval.val_per_class,
        val_fraction=val_fraction)
    on = device if train.x.shape[0] <= opts.max_device_images else torch.device("cpu")
    return Prepared(
        info=info,
        x_train=train.x[tr_idx].to(on), y_train=train.y[tr_idx].to(device),
        x_val=train.x[va_idx].to(on), y_val=train.y[va_idx].to(device),
        x_test=test.x.to(on), y_test=test.y.to(device),
        augment=data.make_augment(spec.data.augmentation, info), device=device,
        val_per_class=data.held_out_per_class(train.y[va_idx], info.num_classes))


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
        # float64 only where asked (RunOptions.float64: equivalence checks); else the model's own.
        self.dtype = next(model.parameters()).dtype
        self.numerics = numerics_of(spec, prep.device, self.dtype)  # the arithmetic every round records
        self.autocast, self.channels_last = self.numerics["autocast"] is not None, self.numerics["channels_last"]
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                                   weight_decay=t.weight_decay)
        self.masker = pruning.MaskApplier(model, masks, self.opt)
        # The dense round has nothing to mask: skip the per-step multiply.
        self.sparse = pruning.density(masks) < 1.0
        self.names = {p: n for n, p in model.named_parameters()}
        self.loss = LOSSES[get_method(spec.prune.method).loss]

    def lr_at(self, epoch: int) -> float:
        t = self.spec.train
        if t.schedule == "constant":
            return t.lr
        # Past `epochs` (imp.retrain: paper_code) this runs on past its period,
        # as torch's CosineAnnealingLR does: back up from 0.
        return 0.5 * t.lr * (1 + math.cos(math.pi * epoch / t.epochs))

    def _inputs(self, xb: torch.Tensor) -> torch.Tensor:
        return _inputs(xb, self.prep.info, self.prep.device, self.channels_last, self.dtype)

    def train_epoch(self, round_k: int, epoch: int) -> dict:
        """One epoch alone; returns {loss, acc, images} (one device sync at the
        end). Raises what failed (its data, its loss, a non-finite loss)."""
        row = run_epoch(Solo(self), round_k, epoch)[0]
        if isinstance(row, BaseException):
            raise row
        return row

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> Optional[float]:
        self.model.eval()
        return accuracy(self.forward, x, y, self.prep.info, self.prep.device, self.autocast,
                        self.channels_last, self.dtype)

    @torch.no_grad()
    def evaluate(self, splits: tuple[str, ...], keep: bool, predict: tuple[str, ...] = ()) -> Evaluation:
        """Accuracy on each of `splits` (train/val/test) and, for those in `predict`, every image's
        predicted class and label, with one device sync. With `eval.bn_recalibrate`, measured after
        recalibrating BatchNorm on the training subset: kept when `keep` (a round's end: the committed
        weights are the measured ones), else undone (mid-round: training goes on from its own state)."""
        p = self.prep
        tensors = {"train": (p.x_train, p.y_train), "val": (p.x_val, p.y_val), "test": (p.x_test, p.y_test)}
        saved = None
        if self.spec.eval.bn_recalibrate:
            if not keep:
                saved = {k: v.clone() for k, v in self.model.state_dict().items()
                         if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
            recalibrate_bn(self.model, self.forward, p.x_train, p.info, p.device, self.autocast, self.channels_last,
                           self.dtype)
        self.model.eval()
        dev = p.device
        preds = {s: classify(self.forward, tensors[s][0], p.info, dev, self.autocast, self.channels_last, self.dtype)
                 for s in dict.fromkeys(splits + predict)}
        labels = {s: tensors[s][1].to(dev) for s in preds}
        hits = [(preds[s] == labels[s]).sum() for s in splits]
        # Everything the host needs in one transfer: the counts, then the asked splits' predictions and labels.
        parts = [torch.stack(hits) if hits else torch.zeros(0, dtype=torch.long, device=dev)]
        parts += [t for s in predict for t in (preds[s], labels[s].long())]
        counts, *rest = torch.cat(parts).cpu().split([t.shape[0] for t in parts])
        n = {s: tensors[s][0].shape[0] for s in splits}
        out = Evaluation({f"{s}_acc": c / n[s] if n[s] else None for s, c in zip(splits, counts.tolist())},
                         dict(zip(predict, rest[0::2])), dict(zip(predict, rest[1::2])))
        if saved is not None:
            self.model.load_state_dict(saved, strict=False)
        return out

    # --- state ------------------------------------------------------------
    def momentum_state(self) -> dict[str, torch.Tensor]:
        return {self.names[p]: st["momentum_buffer"] for p, st in self.opt.state.items()
                if st.get("momentum_buffer") is not None}

    def load_momentum(self, bufs: dict[str, torch.Tensor]) -> None:
        for p, name in self.names.items():
            if name in bufs:
                self.opt.state[p]["momentum_buffer"] = bufs[name].to(p.device, p.dtype).clone(
                    memory_format=torch.preserve_format)

    def masks(self) -> dict[str, torch.Tensor]:
        """{name: 0/1 mask} of the prunable weights (the masker's own tensors)."""
        return {self.names[p]: m for p, m in zip(self.masker.params, self.masker.masks)}


def numerics_of(spec: TrialSpec, device: torch.device, dtype: torch.dtype) -> dict:
    """The arithmetic a lineage of `spec` trains with on `device` with weights
    of `dtype`: bf16 autocast and channels_last act only on CUDA."""
    cuda = device.type == "cuda"
    return {"device": device.type, "dtype": str(dtype).replace("torch.", ""),
            "autocast": "bfloat16" if cuda and spec.train.bf16 else None,
            "channels_last": cuda and spec.train.channels_last}


def precision_of(numerics: Optional[dict]) -> Optional[str]:
    """A round's effective precision from its recorded numerics: "bf16" under
    bfloat16 autocast, else "fp32" / "fp64" by dtype; None where none was recorded."""
    if not isinstance(numerics, dict):
        return None
    if numerics.get("autocast") == "bfloat16":
        return "bf16"
    dtype = numerics.get("dtype")
    return {"float32": "fp32", "float64": "fp64"}.get(dtype, dtype)


# --- the one epoch loop --------------------------------------------------------------

class NonFiniteLoss(FloatingPointError):
    """A member's training loss became NaN or infinite (a diverged run)."""


class EpochStream:
    """One member's epoch: its data order and augmentation draws, from its own
    (seed, round, epoch) seed. The only place a lineage's training data is cut."""

    def __init__(self, trainer: Trainer, round_k: int, epoch: int):
        p = trainer.prep
        self.prep, self.batch_size, self.trial_id = p, trainer.spec.train.batch_size, trainer.spec.trial_id
        self.round, self.seed = round_k, seed_for(trainer.spec.seed, round_k, epoch)
        gen = torch.Generator().manual_seed(self.seed)
        # Augmentation draws on the device the images live on (a large dataset
        # stays on the host: max_device_images), not necessarily the model's.
        on = p.x_train.device
        self.aug_gen = gen if on.type == "cpu" else torch.Generator(on).manual_seed(self.seed)
        self.perm = torch.randperm(p.x_train.shape[0], generator=gen).to(on)

    def batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented uint8 images and labels of the batch starting at `b`."""
        p = self.prep
        idx = self.perm[b:b + self.batch_size]
        return p.augment(p.x_train[idx], self.aug_gen), p.y_train[idx.to(p.y_train.device)]


class Solo:
    """The program of one lineage alone: its own module and optimizer. A program (this, or a
    FusedTrainer) is what `run_epoch` drives: `trainers`, `device`, `autocast`, `begin(lr)`,
    `forward(xbs) -> [B, K*N]`, `step(loss)` (backward, SGD, masks), `end(active)` (the hand-back)."""

    def __init__(self, trainer: Trainer):
        self.trainers = [trainer]
        self.device, self.autocast = trainer.prep.device, trainer.autocast

    def begin(self, lr: float) -> None:
        t = self.trainers[0]
        for g in t.opt.param_groups:
            g["lr"] = lr
        t.model.train()

    def forward(self, xbs: list[torch.Tensor]) -> torch.Tensor:
        t = self.trainers[0]
        return t.forward(t._inputs(xbs[0]))

    def step(self, loss: torch.Tensor) -> None:
        t = self.trainers[0]
        t.opt.zero_grad(set_to_none=True)
        loss.backward()
        t.opt.step()
        if t.sparse:
            t.masker.apply()

    def end(self, active: list[int]) -> None:
        """The member's own module is what trained: nothing to hand back."""


def run_epoch(program, round_k: int, epoch: int, active: Optional[list[int]] = None) -> list:
    """One epoch of every member of `program`, each with its own stream, loss, masks and statistics:
    per member {loss, acc, images}, or the exception it failed with (augmentation, loss, a non-finite
    loss). A failed member's slot is fed another's batch for the rest of the epoch and never handed
    back, so the others train on, their bits unchanged (no slot's values reach another's). The state
    goes back to the `active` members (default all)."""
    ts = program.trainers
    K, t0 = len(ts), ts[0]
    n, N = t0.prep.x_train.shape[0], t0.prep.info.num_classes
    lrs = {t.lr_at(epoch) for t in ts}
    if len(lrs) != 1:
        raise ValueError(f"members' learning rates at epoch {epoch} differ: {sorted(lrs)}")
    streams = [EpochStream(t, round_k, epoch) for t in ts]
    torch.manual_seed(streams[-1].seed)  # for any op that draws from the global RNG
    program.begin(lrs.pop())
    dev = program.device
    errors: list[Optional[BaseException]] = [None] * K
    loss_sum = torch.zeros(K, device=dev)
    correct = torch.zeros(K, device=dev, dtype=torch.long)
    for b in range(0, n, t0.spec.train.batch_size):
        batches = [_own(errors, i, lambda s=s: s.batch(b)) for i, s in enumerate(streams)]
        ok = [i for i in range(K) if errors[i] is None]
        if not ok:
            break
        batches = [bt if errors[i] is None else batches[ok[0]] for i, bt in enumerate(batches)]
        ybs = [y.to(dev, non_blocking=True) for _, y in batches]
        B = ybs[0].shape[0]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=program.autocast):
            out = program.forward([x for x, _ in batches]).view(B, K, N)
            losses = [_own(errors, i, lambda i=i, t=t: t.loss(out[:, i].contiguous(), ybs[i], N))
                      for i, t in enumerate(ts)]
            # A failed slot still gets a loss (zero): the step keeps its shapes.
            losses = [l if l is not None else out[:, i].float().sum() * 0.0 for i, l in enumerate(losses)]
        loss = losses[0] if K == 1 else torch.stack(losses)
        program.step(loss if K == 1 else loss.sum())
        loss_sum += loss.detach() * B
        correct += (out.argmax(2) == torch.stack(ybs, 1)).sum(0)
    sums, hits = loss_sum.tolist(), correct.tolist()
    for i, ls in enumerate(sums):
        if errors[i] is None and not math.isfinite(ls):
            errors[i] = NonFiniteLoss(f"trial {ts[i].spec.trial_id}: training loss is {ls} in round {round_k}, "
                                      f"epoch {epoch} (diverged: lower train.lr?)")
    program.end([i for i in (range(K) if active is None else active) if errors[i] is None])
    return [errors[i] if errors[i] is not None else {"loss": sums[i] / n, "acc": hits[i] / n, "images": n}
            for i in range(K)]


def _own(errors: list, i: int, fn):
    """fn() for member i, unless it failed already; its own failure is recorded, not raised."""
    if errors[i] is not None:
        return None
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- the member's own (augmentation, loss); OOM is the group's
        if is_oom(e):
            raise
        errors[i] = e
        return None


def is_oom(e: BaseException) -> bool:
    """Out of device (or host) memory: a group's problem, solved by training fewer members at once."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and (
        "out of memory" in str(e) or "can't allocate memory" in str(e)))


def save_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
