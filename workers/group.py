"""Several same-shape lineages advanced in lockstep, fused into one program.

    results = run_group([(spec, store), ...], opts, context, on_round)

Each member is an ordinary lineage (workers/lineage.py): its own storage,
owner token, method, data, seeds and masks; each of its rounds is committed
under its own trial id with the same files and metrics as a solo round, plus
`fused_with` (the trial ids it was trained with). Only the epochs are shared:
workers/fused.py trains the members' `Trainer`s as one program.

Determinism. The group trains all of its members' slots in every fused epoch,
even a member that is not training that epoch (it finished the round before a
kill, or resumed from a later checkpoint): its slot computes and its result
is dropped. So every fused step of a group has the same shapes, and a member's
bits never depend on which of the others were active, which makes a resumed
fused sweep equal an uninterrupted one bit for bit on CPU. A change of the
group itself (another `runtime.fuse`, a member that fails) may change bits,
never correctness.

Failure. A member whose own part fails (its data, its start, its commit) is
dropped from the group with a FAILED marker naming the cause; the others go
on and keep everything they committed. `run_group` raises at the end if any
member failed, so the scheduler retries the group: committed rounds are
skipped, the failed member tries again.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from workers.fused import FusedTrainer, can_fuse
from workers.lineage import LineageContext
from workers.methods import get_method
from workers.round import RoundRun, copy_round
from workers.spec import RunOptions, TrialSpec
from workers.store import LineageStore

log = logging.getLogger("lth_sweep.group")


class GroupFailed(Exception):
    """Some members of a fused group failed (the others' rounds are committed)."""


@dataclass
class Member:
    spec: TrialSpec
    store: LineageStore
    ctx: Optional[LineageContext] = None
    error: Optional[BaseException] = None
    metrics: list = field(default_factory=list)

    @property
    def trial_id(self) -> str:
        return self.store.trial_id

    @property
    def next_round(self) -> int:
        return self.ctx.done

    @property
    def finished(self) -> bool:
        return self.error is not None or self.ctx.done >= self.spec.num_rounds


def run_group(members: list[tuple[TrialSpec, LineageStore]], opts: Optional[RunOptions] = None,
              context: Optional[dict] = None, on_round: Optional[Callable[[dict], None]] = None,
              on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    """Run (or finish) the lineages of `members` together; returns {trial_id: [metrics of
    every committed round]} of the members that finished."""
    group = [Member(spec, store) for spec, store in members]
    for m in group:
        # Prepared even when finished: a member that is ahead still fills its slot.
        _guard(m, lambda m=m: setattr(m, "ctx", LineageContext.open(m.spec, m.store, opts, context,
                                                                    prepare_finished=True)))
    live = [m for m in group if m.error is None]
    for m in live:
        m.ctx.on_epoch = on_epoch
    while any(not m.finished for m in live):
        k = min(m.next_round for m in live if not m.finished)
        _round(k, live, on_round)
    for m in live:
        if m.error is None:
            m.metrics = m.ctx.finish()
    failed = [m for m in group if m.error is not None]
    if failed:
        raise GroupFailed(f"{len(failed)} of {len(group)} fused lineages failed: " + "; ".join(
            f"{m.trial_id}: {type(m.error).__name__}: {m.error}" for m in failed))
    return {m.trial_id: m.metrics for m in group}


def _guard(m: Member, fn):
    """Run fn for member m; a failure of its own drops it from the group."""
    try:
        return fn()
    except Exception as e:  # the member's own problem (data, storage, its method)
        m.error = e
        log.error("trial %s leaves its fused group: %s: %s", m.trial_id, type(e).__name__, e)
        try:
            m.store.write_marker("FAILED.json", {"time": time.time(), "error": f"{type(e).__name__}: {e}",
                                                 "fused_group": True})
        except OSError:
            pass
        return None


def _round(k: int, live: list[Member], on_round) -> None:
    """Round k of every live member whose next round it is; the others (ahead
    after a kill) join as slots that train without committing."""
    slots: list[tuple[Member, RoundRun, bool]] = []  # (member, its run, commits this round)
    for m in live:
        if m.error is not None:
            continue
        due = not m.finished and m.next_round == k
        start = _guard(m, lambda m=m: m.ctx.method.start_round(k if due else _shadow_round(m), m.ctx))
        if start is None:
            continue
        if start.copy_from is not None:  # not trained: taken over from another lineage
            if due:
                _report(m, _guard(m, lambda m=m, s=start: copy_round(m.ctx, k, s)), on_round)
            continue
        run = _guard(m, lambda m=m, s=start: RoundRun(m.ctx, k if due else _shadow_round(m), s))
        if run is not None:
            slots.append((m, run, due))
    if not any(due for _, _, due in slots):
        return
    fused = _train(k, slots)
    trained = sorted(m.trial_id for m, _, _ in slots) if fused else None
    for m, run, due in slots:
        if due and m.error is None:
            extra = {"fused_with": [t for t in trained if t != m.trial_id]} if trained else None
            _report(m, _guard(m, lambda run=run, e=extra: run.commit(e)), on_round)


def _shadow_round(m: Member) -> int:
    """The round a member that is ahead trains as a slot: its last committed one
    (a round it has every file for; nothing of it is committed again)."""
    return max(0, min(m.next_round, m.spec.num_rounds) - 1)


def _report(m: Member, metrics: Optional[dict], on_round) -> None:
    if metrics is None:
        return
    m.ctx.done += 1
    if on_round is not None:
        on_round(metrics)


def _train(k: int, slots: list[tuple[Member, RoundRun, bool]]) -> bool:
    """The epochs of round k for every slot: fused when they can be, each alone
    when they cannot. A slot trains from the first epoch any slot is at;
    until it reaches its own (resumed) epoch it only fills its place."""
    runs = [run for _, run, _ in slots]
    trainers = [run.trainer for run in runs]
    reason = can_fuse(trainers) if len(runs) > 1 else "one member"
    fused = FusedTrainer(trainers, conv=slots[0][0].ctx.opts.fuse_conv) if reason is None else None
    if fused is None and len(runs) > 1:
        log.warning("round %d of %s trains unfused: %s", k, ", ".join(m.trial_id for m, _, _ in slots), reason)
    epochs = slots[0][0].spec.train.epochs
    joined: set[int] = set()
    for epoch in range(min(run.epoch for run in runs), epochs):
        active = [i for i, (m, run, due) in enumerate(slots) if due and m.error is None and run.epoch == epoch]
        if not active:
            continue
        if fused is None:
            results = {i: runs[i].trainer.train_epoch(k, epoch) for i in active}
        else:
            fresh = [i for i in active if i not in joined]
            if fresh:  # a slot that waited for its own epoch starts from its own state
                fused.reload(fresh)
                joined.update(fresh)
            rows = fused.train_epoch(k, epoch, active)
            results = {i: rows[i] for i in active}
        for i, ep in results.items():
            m = slots[i][0]
            _guard(m, lambda i=i, ep=ep: runs[i].after_epoch(epoch, ep))
    return fused is not None


def fuse_key(spec: TrialSpec) -> Optional[tuple]:
    """What lineages must share to be fused: the network's shapes (dataset, its
    parameters and subset size, architecture, width, the method's variant and
    head), the training schedule and the round structure. Augmentation, seed,
    loss, pruning rule, init and evaluation may differ. None: never fused (a
    method built from another lineage starts from that one's rounds)."""
    method = get_method(spec.prune.method)
    if method.parent:
        return None
    d, p = spec.data, spec.prune
    return (d.dataset, d.imbalance, d.fraction, d.images_per_class, spec.model.arch, spec.model.width,
            method.variant, method.head, spec.train, p.rounds, p.rewind_epoch, p.prunable)
