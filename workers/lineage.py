"""One IMP lineage: prune -> rewind -> train -> evaluate -> commit, per round.

`run_lineage(spec, store)` is a plain function (no Ray): the orchestrator's
Tune trainable is a thin adapter around it, and tests call it directly.

Resume is free because every phase first looks at storage: committed rounds
are skipped, a round in flight continues from its newest mid-round
checkpoint. Each epoch's randomness (shuffle, augmentation) is seeded from
(seed, round, epoch), not carried over from the previous epoch, so a lineage
resumed at an epoch boundary computes the same bits as one that never
stopped (on CPU).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from workers import data as D
from workers import pruning as P
from workers.losses import LOSSES, make_head
from workers.methods import MASKS, get_method, parent_spec
from workers.pruning.layerwise import same_layer_random_masks
from workers.pruning.matching import matching_width, param_count
from workers.models import build_model
from workers.models.inits import load_init
from workers.spec import RunOptions, TrialSpec
from workers.store import CorruptRound, LineageStore

log = logging.getLogger("lth_sweep.lineage")

EVAL_BATCH = 1000
HEARTBEAT_S = 30.0

def _seed(*parts: int) -> int:
    """A 63-bit seed from integers: independent streams per (seed, round, epoch)."""
    h = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def pick_device(opts: RunOptions, context: dict) -> torch.device:
    if opts.device:
        return torch.device(opts.device)
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
    info, train, test = D.load_dataset(spec.data.dataset, opts.data_root)
    if spec.data.imbalance is not None:
        from workers.data.cifar_lt import load_long_tail
        train, test = load_long_tail(opts.data_root, True, spec.data.imbalance)
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
        seed = _seed(self.spec.seed, round_k, epoch)
        gen = torch.Generator().manual_seed(seed)
        aug_gen = gen if p.device.type == "cpu" else torch.Generator(p.device).manual_seed(seed)
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


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the full state (weights, BN statistics, head)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _save(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def run_lineage(spec: TrialSpec, store: LineageStore, opts: Optional[RunOptions] = None,
                context: Optional[dict] = None,
                on_round: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Run (or finish) the IMP lineage of `spec`, committing each round to `store`.

    `context` carries where it runs (`node`, `gpu_ids`) for the result rows;
    `on_round(metrics)` is called after each newly committed round. Returns
    the metrics of every committed round, in order.
    """
    opts = opts or RunOptions()
    context = dict(context or {})
    context.setdefault("node", socket.gethostname())
    context.setdefault("gpu_ids", [])
    method = get_method(spec.prune.method)

    legacy = _legacy_rule(spec, store)
    store.write_spec(spec.to_dict())
    parent = _finished_parent(spec, store) if method.parent else None
    done, verified = _verified_prefix(store)
    store.clear_partials_before(done)
    if done == spec.num_rounds:
        return [store.read_manifest(k)["metrics"] for k in range(done)]
    token = store.claim(context)

    device = pick_device(opts, context)
    prep = prepare(spec, opts, device, legacy)
    info = prep.info
    model = make_model(spec, info, opts).to(device)
    names = P.prunable_names(model, spec.prune.prunable)

    rewind_saved = None  # round 0's committed rewind state, read once
    for k in range(done, spec.num_rounds):
        if parent is not None and (k == 0 or method.mask == "dense_matched"):
            metrics = (_copy_parent_round0(spec, store, parent, token) if k == 0 else
                       _small_dense_round(spec, opts, store, parent, prep, k, context, token))
            if on_round is not None:
                on_round(metrics)
            continue
        if k == 0:
            masks = P.full_masks(model, names)
            rewind_state = model_state(model) if spec.prune.rewind_epoch == 0 else None
        else:
            # The first resumed round reuses what _verified_prefix just read and checked.
            prev = verified.pop(k - 1, None) or store.load_round(k - 1, ["weights.safetensors",
                                                                         "mask.safetensors"])
            if rewind_saved is None:
                rw = verified.pop("rewind", None) or store.load_round(0, ["rewind.safetensors"])
                rewind_saved = st_load(rw["rewind.safetensors"])
            model.load_state_dict(st_load(prev["weights.safetensors"]))
            unpacked = P.unpack_masks(st_load(prev["mask.safetensors"]))
            # Model order, not the file's: it fixes the prune's tie-breaking
            # and the order of the per-layer table.
            prev_masks = {n: unpacked[n].to(device) for n in names}
            gen = torch.Generator().manual_seed(_seed(spec.seed, k, -1))
            if method.mask == "same_layer":
                pm = P.unpack_masks(st_load(parent.load_round(k, ["mask.safetensors"])["mask.safetensors"]))
                masks = same_layer_random_masks({n: pm[n].to(device) for n in names}, gen)
            else:
                masks = MASKS[method.mask](model, prev_masks, spec.prune.rate, gen)
            rewind_state = rewind_saved
            model.load_state_dict(rewind_state)
        metrics = _train_round(spec, opts, store, prep, model, masks, k, rewind_state, context, token)
        if on_round is not None:
            on_round(metrics)
    store.clear_marker("HEARTBEAT.json")
    return [store.read_manifest(k)["metrics"] for k in range(spec.num_rounds)]


def _legacy_rule(spec: TrialSpec, store: LineageStore) -> Optional[dict]:
    """A lineage begun before selection moved to query time keeps its old
    validation images (10% of each class), so all its rounds are measured
    alike. One trained on a dataset whose labels mirroring breaks (digits,
    CLaMM) with an augmentation that mirrored it then is redone from round 0."""
    from workers.spec import legacy_validation
    legacy = legacy_validation(store.read_spec())
    if legacy is None:
        return None
    if spec.data.augmentation != "none" and "horizontal" not in D.dataset_info(spec.data.dataset).flips:
        if store.committed_prefix():
            log.warning("trial %s was trained with a %s augmentation that mirrored %s images, which "
                        "changes their labels: redoing the lineage from round 0", store.trial_id,
                        spec.data.augmentation, spec.data.dataset)
            store.invalidate_from(0)
        store.clear_partials_before(spec.num_rounds)
        store.write_spec(spec.to_dict(), replace=True)
        return None
    return legacy


class ParentMissing(Exception):
    """A parent-dependent trial whose `imp` lineage is not (fully) committed."""


def _finished_parent(spec: TrialSpec, store: LineageStore) -> LineageStore:
    pid = parent_spec(spec).trial_id
    parent = store.sweep.lineage(pid)
    have = parent.committed_prefix()
    if have < spec.num_rounds:
        raise ParentMissing(
            f"{spec.prune.method} trial {store.trial_id} is built from the imp lineage {pid} of the same "
            f"grid point, which has {have}/{spec.num_rounds} rounds committed in this sweep; "
            f"add imp to the experiment's methods (the driver runs it first)")
    return parent


def _copy_parent_round0(spec, store, parent, token) -> dict:
    """Round 0 is the parent's dense network: commit its verified files under
    this trial (nothing retrained), so resume and the tables treat it as ours."""
    names = ["weights.safetensors", "mask.safetensors", "rewind.safetensors"]
    files = parent.load_round(0, names)
    metrics = dict(parent.read_manifest(0)["metrics"])
    metrics.update(trial_id=store.trial_id, checkpoint_uri=store.round_uri(0), copied_from=parent.trial_id)
    files["metrics.json"] = json.dumps(metrics, sort_keys=True, indent=1).encode()
    store.check_owner(token)
    store.commit_round(0, files, metrics, spec.to_dict())
    return metrics


def _small_dense_round(spec, opts, store, parent, prep, k, context, token) -> dict:
    """A dense network with the parameter count of the parent's round-k ticket
    (width searched over the architecture's channel rounding), trained from
    scratch for every epoch. Its row's density is the ticket's it matches."""
    info = prep.info
    pm = P.unpack_masks(st_load(parent.load_round(k, ["mask.safetensors"])["mask.safetensors"]))
    ticket = make_model(parent_spec(spec), info, opts)
    prunable = sum(m.numel() for m in pm.values())
    target = param_count(ticket) - prunable + sum(int(m.sum()) for m in pm.values())
    method = get_method(spec.prune.method)

    def build(width: float) -> torch.nn.Module:
        return build_model(spec.model.arch, num_classes=info.num_classes, in_channels=info.channels,
                           image_size=info.image_size, width=width, variant=method.variant)

    width = matching_width(build, target, hi=spec.model.width)
    torch.manual_seed(_seed(spec.seed, k, -2))
    model = build(width).to(prep.device)
    masks = P.full_masks(model, P.prunable_names(model, spec.prune.prunable))
    extra = {"density": sum(int(m.sum()) for m in pm.values()) / prunable, "width": width,
             "params": param_count(model), "ticket_params": target}
    return _train_round(spec, opts, store, prep, model, masks, k, None, context, token,
                        first_epoch=0, extra=extra)


def make_model(spec: TrialSpec, info: D.DatasetInfo, opts: RunOptions,
               with_init: bool = True) -> torch.nn.Module:
    """The trial's network at its initialisation: architecture, the method's
    variant and head, then the init's weights (seeded, so a resume rebuilds it)."""
    method = get_method(spec.prune.method)
    torch.manual_seed(_seed(spec.seed, -1))
    model = build_model(spec.model.arch, num_classes=info.num_classes, in_channels=info.channels,
                        image_size=info.image_size, width=spec.model.width, variant=method.variant)
    if method.head != "linear":
        model.fc = make_head(method.head, model.fc.in_features, info.num_classes)
    if with_init and spec.model.init != "random":
        report = load_init(model, spec.model.init, arch=spec.model.arch, path=opts.init_path,
                           image_size=info.image_size, in_channels=info.channels)
        log.info("init %s: %s", spec.model.init, report.summary())
    return model


def _verified_prefix(store: LineageStore) -> tuple[int, dict]:
    """Committed rounds to trust: the contiguous prefix whose files we will
    read again (round 0's rewind state, the newest round's weights and mask)
    verify against their manifests. A corrupt round is redone from the round
    before it, never silently from round 0. Returns the prefix length and the
    files it read ({"rewind": ..., k - 1: ...}), so they are not read twice."""
    while True:
        k = store.committed_prefix()
        if k == 0:
            return 0, {}
        try:
            rewind = store.load_round(0, ["rewind.safetensors"])
        except CorruptRound as e:
            log.warning("%s: redoing the lineage from round 0", e)
            store.invalidate_from(0)
            continue
        try:
            last = store.load_round(k - 1, ["weights.safetensors", "mask.safetensors"])
        except CorruptRound as e:
            log.warning("%s: redoing it from round %d", e, k - 2)
            store.invalidate_from(k - 1)
            continue
        return k, {"rewind": rewind, k - 1: last}


def _train_round(spec, opts, store, prep, model, masks, k, rewind_state, context, token=None,
                 first_epoch: Optional[int] = None, extra: Optional[dict] = None) -> dict:
    t, pr = spec.train, spec.prune
    trainer = Trainer(spec, prep, model, masks, opts)
    if first_epoch is None:
        first_epoch = 0 if k == 0 else pr.rewind_epoch
    start_epoch = first_epoch
    history: list[dict] = []
    wall_prev = 0.0
    started_at = _now()
    partial = store.load_partial(k)
    if partial is not None:
        epoch, files, meta = partial
        model.load_state_dict(st_load(files["model.safetensors"]))
        trainer.load_momentum(st_load(files["momentum.safetensors"]))
        if "rewind.safetensors" in files:
            rewind_state = st_load(files["rewind.safetensors"])
        start_epoch, history = epoch, meta["history"]
        wall_prev, started_at = meta["wall_s"], meta["started_at"]
        log.info("trial %s round %d: resuming at epoch %d", store.trial_id, k, epoch)
    trainer.masker.apply()  # the rewound/pruned weights start exactly masked

    t0 = time.perf_counter()
    last_ckpt = time.monotonic()
    last_beat = 0.0
    images = 0
    for epoch in range(start_epoch, t.epochs):
        ep = trainer.train_epoch(k, epoch)
        images += ep["images"]
        row = {"epoch": epoch + 1, "train_loss": ep["loss"], "train_acc_running": ep["acc"],
               "lr": trainer.lr_at(epoch)}
        if opts.eval_every and (epoch + 1) % opts.eval_every == 0 and epoch + 1 < t.epochs:
            row.update(trainer.evaluate(("val", "test"), keep=False))
        history.append(row)
        if k == 0 and epoch + 1 == pr.rewind_epoch:
            rewind_state = model_state(model)
        now = time.monotonic()
        if epoch + 1 < t.epochs and (
                (opts.checkpoint_every and (epoch + 1) % opts.checkpoint_every == 0)
                or (opts.checkpoint_interval_s and now - last_ckpt >= opts.checkpoint_interval_s)):
            files = {"model.safetensors": _save(model_state(model)),
                     "momentum.safetensors": _save(trainer.momentum_state())}
            if k == 0 and rewind_state is not None:
                files["rewind.safetensors"] = _save(rewind_state)
            store.check_owner(token)
            store.save_partial(k, epoch + 1, files, {
                "history": history, "started_at": started_at,
                "wall_s": wall_prev + time.perf_counter() - t0})
            last_ckpt = now
        if now - last_beat >= HEARTBEAT_S:
            store.heartbeat({"round": k, "epoch": epoch + 1, "epochs": t.epochs, **context})
            last_beat = now
    train_s = time.perf_counter() - t0
    if k == 0 and rewind_state is None:  # rewind_epoch >= epochs: rewind to the end state
        rewind_state = model_state(model)

    accs = trainer.evaluate(("train", "val", "test"), keep=True)
    wall_s = wall_prev + time.perf_counter() - t0
    metrics = {
        "trial_id": store.trial_id,
        "round": k,
        "density": P.density(masks),
        **accs,
        "val_per_class": prep.val_per_class,
        "epochs": t.epochs - first_epoch,
        "wall_s": wall_s,
        "images_per_s": images / train_s if train_s > 0 else None,
        "node": context["node"],
        "gpu_ids": ",".join(str(g) for g in context["gpu_ids"]),
        "device": str(prep.device),
        "started_at": started_at,
        "finished_at": _now(),
        "checkpoint_uri": store.round_uri(k),
        "layers": P.layer_densities(masks),
        "history": history,
        **(extra or {}),
    }
    files = {"weights.safetensors": _save(model_state(model)),
             "mask.safetensors": _save(P.pack_masks(masks))}
    if k == 0:
        files["rewind.safetensors"] = _save(rewind_state)
    files["metrics.json"] = json.dumps(metrics, sort_keys=True, indent=1).encode()
    store.check_owner(token)
    store.commit_round(k, files, metrics, spec.to_dict())
    store.clear_partial(k)
    log.info("trial %s round %d: density %.4f val %s test %.4f (%.1fs)", store.trial_id, k,
             metrics["density"], "-" if accs["val_acc"] is None else f"{accs['val_acc']:.4f}",
             accs["test_acc"], wall_s)
    return metrics
