"""One round of one lineage, from its start to its commit.

    run = RoundRun(ctx, k, start)            # resumes from the round's mid-round checkpoint
    for epoch in range(run.epoch, epochs):
        run.after_epoch(epoch, run.trainer.train_epoch(k, epoch))
    metrics = run.commit(extra)               # evaluate, write the files, manifest last

workers/group.py is that loop, for one lineage or several fused; a round taken
over from another lineage is committed by `copy_round`.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from typing import Optional

from safetensors.torch import load as st_load

from workers import checkpoint, predictions, pruning
from workers.context import check_precision
from workers.migrate import rewind_state
from workers.methods import RoundStart
from workers.store import CorruptRound
from workers.train import Trainer, model_state, save_tensors

log = logging.getLogger("lth_sweep.round")

HEARTBEAT_S = 30.0
PROGRESS_S = 2.0  # how often a round tells `on_epoch` where it is


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class RoundRun:
    """The training state of round k of one lineage (ctx: a LineageContext)."""

    def __init__(self, ctx, k: int, start: RoundStart):
        self.ctx, self.k, self.start = ctx, k, start
        self.trainer = Trainer(ctx.spec, ctx.prep, start.model, start.masks, ctx.opts)
        self.rewind = start.rewind
        self.epoch = start.first_epoch  # the next epoch to train
        self.end = round_end(ctx.spec, start.first_epoch)  # the epoch the round ends before
        self.history: list[dict] = []
        self.wall_prev, self.started_at = 0.0, now()
        partial = ctx.store.load_partial(k)
        if partial is not None:
            epoch, files, meta = partial
            # A checkpoint of an attempt in another precision: its epochs are not this one's arithmetic.
            check_precision(ctx, {k: meta.get("numerics")}, self.trainer.numerics,
                            f" ({epoch} epoch{'s' if epoch != 1 else ''} in, a mid-round checkpoint)")
            start.model.load_state_dict(st_load(files["model.safetensors"]))
            self.trainer.load_momentum(st_load(files["momentum.safetensors"]))
            if "rewind.safetensors" in files:
                self.rewind = st_load(files["rewind.safetensors"])
            self.epoch, self.history = epoch, meta["history"]
            self.wall_prev, self.started_at = meta["wall_s"], meta["started_at"]
            log.info("trial %s round %d: resuming at epoch %d", ctx.store.trial_id, k, epoch)
        self.trainer.masker.apply()  # the rewound/pruned weights start exactly masked
        self.t0 = time.perf_counter()
        self.images = 0
        self.last_ckpt, self.last_beat, self.last_progress = time.monotonic(), 0.0, 0.0

    def after_epoch(self, epoch: int, ep: dict) -> None:
        """Book-keeping after `epoch` trained (ep: Trainer.train_epoch's result):
        history, mid-round evaluation, the rewind state, checkpoint, heartbeat."""
        ctx, opts = self.ctx, self.ctx.opts
        self.images += ep["images"]
        row = {"epoch": epoch + 1, "train_loss": ep["loss"], "train_acc_running": ep["acc"],
               "lr": self.trainer.lr_at(epoch)}
        if opts.eval_every and (epoch + 1) % opts.eval_every == 0 and epoch + 1 < self.end:
            row.update(self.trainer.evaluate(("val", "test"), keep=False).accs)
        self.history.append(row)
        self.epoch = epoch + 1
        if self.k == 0 and self.epoch == ctx.spec.prune.rewind_epoch:
            self.rewind = model_state(self.start.model)
        now_s = time.monotonic()
        if self.epoch < self.end and (
                (opts.checkpoint_every and self.epoch % opts.checkpoint_every == 0)
                or (opts.checkpoint_interval_s and now_s - self.last_ckpt >= opts.checkpoint_interval_s)):
            self.checkpoint()
            self.last_ckpt = now_s
        if ctx.on_epoch is not None and now_s - self.last_progress >= PROGRESS_S:
            ctx.on_epoch({"trial_id": ctx.store.trial_id, "round": self.k, "epoch": self.epoch, "epochs": self.end})
            self.last_progress = now_s
        if now_s - self.last_beat >= HEARTBEAT_S:
            ctx.store.heartbeat({"round": self.k, "epoch": self.epoch, "epochs": self.end, **ctx.where})
            self.last_beat = now_s

    def checkpoint(self) -> None:
        files = {"model.safetensors": save_tensors(model_state(self.start.model)),
                 "momentum.safetensors": save_tensors(self.trainer.momentum_state())}
        if self.k == 0 and self.rewind is not None:
            files["rewind.safetensors"] = save_tensors(self.rewind)
        self.ctx.store.check_owner(self.ctx.token)
        self.ctx.store.save_partial(self.k, self.epoch, files, {
            "history": self.history, "started_at": self.started_at, "numerics": self.trainer.numerics,
            "wall_s": self.wall_prev + time.perf_counter() - self.t0})

    def commit(self, extra: Optional[dict] = None) -> dict:
        """Evaluate the trained round and commit it; returns its metrics."""
        ctx, k, start = self.ctx, self.k, self.start
        train_s = time.perf_counter() - self.t0
        self.rewind = rewind_state(k, self.rewind, lambda: model_state(start.model))
        ev = self.trainer.evaluate(("train", "val", "test"), keep=True, predict=predictions.SPLITS)
        accs = ev.accs
        predicted = {s: t.numpy() for s, t in ev.predicted.items()}
        labels = {s: t.numpy() for s, t in ev.labels.items()}
        wall_s = self.wall_prev + time.perf_counter() - self.t0
        metrics = {
            "trial_id": ctx.store.trial_id,
            "round": k,
            "density": pruning.density(start.masks),
            **accs,
            **predictions.round_metrics(predicted, labels),
            "val_per_class": ctx.prep.val_per_class,
            "epochs": self.end - start.first_epoch,
            "wall_s": wall_s,
            "images_per_s": self.images / train_s if train_s > 0 else None,
            "node": ctx.where["node"],
            "gpu_ids": ",".join(str(g) for g in ctx.where["gpu_ids"]),
            "device": str(ctx.prep.device),
            "started_at": self.started_at,
            "finished_at": now(),
            "checkpoint_uri": ctx.store.round_uri(k),
            "layers": pruning.layer_densities(start.masks),
            "history": self.history,
            **start.extra,
            **(extra or {}),
        }
        # The network as only its masks cannot give it (workers/checkpoint.py), exactly.
        files = {**checkpoint.round_files(model_state(start.model), start.masks),
                 predictions.FILE: predictions.encode(predicted, labels, ctx.prep.info.num_classes)}
        if k == 0:
            files[checkpoint.REWIND] = save_tensors(self.rewind)
        files["metrics.json"] = json.dumps(metrics, sort_keys=True, indent=1).encode()
        ctx.store.check_owner(ctx.token)
        ctx.store.commit_round(k, files, metrics, ctx.spec.to_dict())
        ctx.store.clear_partial(k)
        log.info("trial %s round %d: density %.4f val %s test %.4f (%.1fs)", ctx.store.trial_id, k,
                 metrics["density"], "-" if accs["val_acc"] is None else f"{accs['val_acc']:.4f}",
                 accs["test_acc"], wall_s)
        return metrics


def round_end(spec, first_epoch: int) -> int:
    """The epoch a round that starts at `first_epoch` ends before: the final
    epoch, or with `imp.retrain: paper_code` (the released code) `epochs`
    epochs later, the schedule's index running on past its period."""
    if spec.prune.retrain == "paper_code":
        return first_epoch + spec.train.epochs
    return spec.train.epochs


def copy_round(ctx, k: int, start: RoundStart) -> dict:
    """Commit round k of another lineage (`start.copy_from`) as this one's:
    its verified files, nothing retrained, so resume and the tables treat it as ours."""
    source = start.copy_from
    manifest = source.read_manifest(k)
    if manifest is None:
        raise CorruptRound(f"round {k} of trial {source.trial_id} has no intact manifest")
    # Whatever files the source round has (its weights in either format,
    # workers/checkpoint.py; predictions unless it predates them), verified.
    files = source.load_round(k, [n for n in manifest["files"] if n != "metrics.json"])
    metrics = dict(manifest["metrics"])
    metrics.update(trial_id=ctx.store.trial_id, checkpoint_uri=ctx.store.round_uri(k), copied_from=source.trial_id)
    files["metrics.json"] = json.dumps(metrics, sort_keys=True, indent=1).encode()
    ctx.store.check_owner(ctx.token)
    ctx.store.commit_round(k, files, metrics, ctx.spec.to_dict())
    return metrics
