"""Lineages advanced in lockstep, a round at a time; a lone lineage is a group of one.

    results = run_group([(spec, store), ...], opts, where, on_round)

Every lineage trains here. Each member keeps its own storage, owner token,
method, data, seeds and masks, and commits its rounds under its own trial id
(workers/round.py) with, when fused, `fused_with` and `fuse_check`. Only the
epochs are shared (workers/train.py's one loop, fused once the self-check passed).

Determinism. A fused program always has the group's width K: a member not
training this round (finished, failed, committed before a kill) leaves its
slot to a pad (a copy of a training member, fed its batches, never read
back), and a member resumed at a later epoch trains its slot from the
earliest one, keeping nothing until it reaches its own. Every step thus has
the same shapes and a member's bits never depend on which others train: a
resumed fused sweep equals an uninterrupted one bit for bit on CPU. Only a
change of the group itself (`runtime.fuse`, cluster size, an out-of-memory
split) may change bits, never correctness.

Failure. A member whose own part fails (data, start, augmentation, loss, a
non-finite loss, commit) leaves the group with a FAILED marker; the others go
on. `run_group` raises at the end if any failed (a group of one: its member's
own exception), so the scheduler retries it: committed rounds are skipped,
finished members not retrained. Out of memory while a fused program is
built, checked or trained splits it in halves, down to each member alone,
from the members' last completed epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from workers import memory
from workers.fused import can_fuse
from workers.fusecheck import LOGIC_IMAGES, Fusion, probe, state_copy
from workers.context import LineageContext
from workers.methods import get_method
from workers.round import RoundRun, copy_round
from workers.spec import RunOptions, TrialSpec
from workers.store import LineageStore, TakenOver
from workers.train import is_oom

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
    marks_failure: bool = True  # a FAILED marker when it fails (a lone lineage's is the scheduler's)

    @property
    def trial_id(self) -> str:
        return self.store.trial_id

    @property
    def training(self) -> bool:
        return self.error is None and self.ctx is not None and self.ctx.done < self.spec.num_rounds


def run_group(members: list[tuple[TrialSpec, LineageStore]], opts: Optional[RunOptions] = None,
              where: Optional[dict] = None, on_round: Optional[Callable[[dict], None]] = None,
              on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    """Run (or finish) the lineages of `members` together; returns {trial_id: [metrics of
    every committed round]}. `on_round(metrics)` after each newly committed round,
    `on_epoch({trial_id, round, epoch, epochs})` now and then within a round."""
    opts = opts or RunOptions()
    group = [Member(spec, store, marks_failure=len(members) > 1) for spec, store in members]
    for m in group:
        _guard(m, lambda m=m: setattr(m, "ctx", LineageContext.open(m.spec, m.store, opts, where)))
        if m.ctx is not None:
            m.ctx.on_epoch = on_epoch
    fusion = Fusion(opts, group[0].store.sweep if group else None)
    while any(m.training for m in group):
        k = min(m.ctx.done for m in group if m.training)
        _round(k, [m for m in group if m.training and m.ctx.done == k], len(group), fusion, on_round)
    failed = [m for m in group if m.error is not None]
    if len(group) == 1 and failed:
        raise failed[0].error
    for m in group:
        if m.error is None:
            m.metrics = m.ctx.finish()
    if failed:
        raise GroupFailed(f"{len(failed)} of {len(group)} fused lineages failed: " + "; ".join(
            f"{m.trial_id}: {type(m.error).__name__}: {m.error}" for m in failed))
    return {m.trial_id: m.metrics for m in group}


def _guard(m: Member, fn):
    """Run fn for member m; a failure of its own drops it from the group. A
    lineage another attempt has taken over (TakenOver) stops this attempt."""
    try:
        return fn()
    except TakenOver:
        raise
    except Exception as e:  # the member's own problem (data, storage, its method, its loss)
        _fail(m, e)
        return None


def _fail(m: Member, e: BaseException) -> None:
    m.error = e
    if not m.marks_failure:
        return
    log.error("trial %s leaves its fused group: %s: %s", m.trial_id, type(e).__name__, e)
    try:
        m.store.mark_failed(f"{type(e).__name__}: {e}", fused_group=True)
    except OSError:
        pass


def _round(k: int, due: list[Member], width: int, fusion: Fusion, on_round) -> None:
    """Round k of the members `due` for it: start it their method's way, then
    copy it (a round taken over from another lineage) or train and commit it."""
    slots: list[tuple[Member, RoundRun]] = []
    for m in due:
        start = _guard(m, lambda m=m: m.ctx.method.start_round(k, m.ctx))
        if start is None:
            continue
        if start.copy_from is not None:
            _report(m, _guard(m, lambda m=m, s=start: copy_round(m.ctx, k, s)), on_round)
            continue
        run = _guard(m, lambda m=m, s=start: RoundRun(m.ctx, k, s))
        if run is not None:
            slots.append((m, run))
    if not slots:
        return
    extra = _train(k, slots, width, fusion)
    for m, run in slots:
        if m.error is None:
            _report(m, _guard(m, lambda run=run, e=extra.get(m.trial_id): run.commit(e)), on_round)


def _report(m: Member, metrics: Optional[dict], on_round) -> None:
    if metrics is None:
        return
    m.ctx.done += 1
    if on_round is not None:
        on_round(metrics)


def _train(k: int, slots: list[tuple[Member, RoundRun]], width: int, fusion: Fusion,
           why: Optional[str] = None) -> dict[str, dict]:
    """The epochs of round k for every slot, fused in a program of `width` slots when that passes its
    self-check, else each alone. Returns what each member's round records about how it trained; one
    that trained outside its group's program records why (numerics `fallback`: "check failed", "out of
    memory", "error: <type>"; `why` carries it down a split)."""
    slots = [(m, run) for m, run in slots if m.error is None]
    if not slots:
        return {}
    fit = _fit(k, [run.trainer for _, run in slots], width, fusion)
    if fit < width:
        return _in_parts(k, slots, fit, width, fusion, why, "memory plan")
    program = info = failure = None
    try:
        program, info = fusion.program([run.trainer for _, run in slots], width)
        if program is not None:
            _epochs(k, slots, program)
    except TakenOver:
        raise
    except Exception as e:  # the fused program's, not a member's (those are caught per member)
        failure = (is_oom(e), f"{type(e).__name__}: {e}")
    if failure is not None:
        # Out here, not in the except clause: there the exception's traceback
        # keeps the failed program's and the check's tensors alive, and the
        # split would run out of memory on what its own failure left behind.
        program = None
        return _refused(k, slots, width, fusion, *failure)
    if program is None:
        if width > 1 and why is None and not (info.get("fuse_check") or {}).get("passed", True):
            why = "check failed"
        _epochs(k, slots, None)
    names = sorted(m.trial_id for m, _ in slots)
    out = {}
    for m, run in slots:
        numerics = {**run.trainer.numerics, "fused": width if program else 1,
                    "conv": program.conv if program else "solo",
                    **({"fallback": why} if why and program is None else {})}
        out[m.trial_id] = {"numerics": numerics, **info}
        if program is not None:
            out[m.trial_id]["fused_with"] = [t for t in names if t != m.trial_id]
    return out


def _fit(k: int, trainers: list, width: int, fusion: Fusion) -> int:
    """The widest program of at most `width` slots whose training, and check
    while it has not run, fit in the device's free memory (workers/memory.py)."""
    dev = trainers[0].prep.device
    if width <= 1 or memory.available(dev) is None or can_fuse(trainers) is not None:
        return width
    step, step64, state64 = memory.steps(trainers[0], probe, LOGIC_IMAGES, state_copy)
    free = memory.available(dev)  # after the measurement, whose memory is free again
    fit = memory.widest(len(trainers), width, free, step, step64, state64, lambda w: fusion.unchecked(trainers, w))
    if fit < width:
        log.warning("round %d: %d slots fused need %.2f GiB with the self-check's copies, %.2f GiB free on %s; "
                    "fusing %d at a time", k, width, memory.need(len(trainers), width, step, step64, state64) / 2 ** 30,
                    free / 2 ** 30, dev, fit)
    return fit


def _refused(k: int, slots: list[tuple[Member, RoundRun]], width: int, fusion: Fusion,
             oom: bool, error: str) -> dict[str, dict]:
    """A fused program that could not be built, checked or trained: out of memory splits it in halves
    (down to each member alone), anything else trains its members alone, each from its last completed
    epoch (the members' own state is written back per epoch)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    who = ", ".join(m.trial_id for m, _ in slots)
    why = "out of memory" if oom else f"error: {error.split(':', 1)[0]}"
    if not oom or width <= 2:
        log.warning("round %d: %s with %d lineages fused (%s); each of them trains alone", k,
                    "out of memory" if oom else f"the fused program failed ({error})", width, who)
        return _train(k, slots, 1, fusion, why)
    half = (width + 1) // 2
    log.warning("round %d: out of memory with %d lineages fused on one device (%s); splitting into groups "
                "of %d", k, width, who, half)
    return _in_parts(k, slots, half, width, fusion, why, why)


def _in_parts(k: int, slots: list[tuple[Member, RoundRun]], size: int, width: int, fusion: Fusion,
              why: Optional[str], cut: str) -> dict[str, dict]:
    """Round k of `slots` trained in parts of `size`: each round records the group of `width` it was
    cut from and why (`cut`; the outermost cut wins)."""
    out: dict[str, dict] = {}
    for i in range(0, len(slots), size):
        part = slots[i:i + size]
        for tid, rec in _train(k, part, min(size, len(part)), fusion, why).items():
            rec["numerics"]["narrowed"] = {"from": width, "why": cut}
            out[tid] = rec
    return out


def _epochs(k: int, slots: list[tuple[Member, RoundRun]], program) -> None:
    """Every slot's remaining epochs of round k. A slot trains from the first epoch any slot is at;
    until it reaches its own (resumed) epoch it only fills its place."""
    runs = [run for _, run in slots]
    joined: set[int] = set()
    for epoch in range(min(run.epoch for run in runs), max(run.end for run in runs)):
        active = [i for i, (m, run) in enumerate(slots) if m.error is None and run.epoch == epoch]
        if not active:
            continue
        if program is None:
            results = {i: _guard(slots[i][0], lambda r=runs[i]: r.trainer.train_epoch(k, epoch)) for i in active}
        else:
            fresh = [i for i in active if i not in joined]
            if fresh:  # a slot that waited for its own epoch starts from its own state
                program.reload(fresh)
                joined.update(fresh)
            rows = program.train_epoch(k, epoch, active)
            results = {i: rows[i] for i in active}
        for i, ep in results.items():
            m = slots[i][0]
            if isinstance(ep, BaseException):
                _fail(m, ep)
            elif ep is not None:
                _guard(m, lambda i=i, ep=ep: runs[i].after_epoch(epoch, ep))


def fuse_key(spec: TrialSpec) -> Optional[tuple]:
    """What lineages must share to be fused: the network's shapes (dataset, its parameters and subset
    size, architecture, width, the method's variant and head), the training schedule and the round
    structure; augmentation, seed, loss, pruning rule, init and evaluation may differ. None: never
    fused (a method built from another lineage starts from that one's rounds)."""
    method = get_method(spec.prune.method)
    if method.parent:
        return None
    d, p = spec.data, spec.prune
    return (d.dataset, tuple(sorted(d.params().items())), d.fraction, d.images_per_class, spec.model.arch,
            spec.model.width, method.variant, method.head, spec.train, p.rounds, p.rewind_epoch, p.prunable,
            p.retrain)
