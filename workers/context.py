"""What every round of one lineage shares (`LineageContext`). Opening one verifies storage, redoes what
is corrupt and claims the lineage; methods (workers/methods/) read committed rounds through it."""
from __future__ import annotations

import logging
import socket
from typing import Callable, Optional

import torch
from safetensors.torch import load as st_load

from workers import checkpoint
from workers import data
from workers import pruning
from workers.methods import ParentMissing, get_method, parent_spec
from workers.rng import PRUNE, seed_for
from workers.migrate import held_out_fraction, rounds_with_numerics
from workers.spec import RunOptions, TrialSpec
from workers.store import CorruptRound, LineageStore
from workers.train import numerics_of, pick_device, precision_of, prepare

log = logging.getLogger("lth_sweep.lineage")


class PrecisionChange(Exception):
    """This attempt would train a lineage in another precision than its
    committed rounds ran in (one line naming both); RunOptions.allow_precision_change
    continues it, and its results cell then names both precisions."""


class LineageContext:
    """What every round of one lineage shares: its spec and store, the data on
    the device, the network, and the verified files of committed rounds."""

    def __init__(self, spec: TrialSpec, store: LineageStore, opts: RunOptions, where: dict):
        # where: the node and GPU ids this lineage runs on, as its rounds record them.
        self.spec, self.store, self.opts, self.where = spec, store, opts, where
        self.method = get_method(spec.prune.method)
        self.info = data.dataset_info(spec.data.dataset)
        self.parent: Optional[LineageStore] = None
        self.done, self.token, self.prep, self.model, self.names = 0, None, None, None, []
        self._verified: dict = {}
        self._rewind: Optional[dict] = None
        self.on_epoch: Optional[Callable[[dict], None]] = None  # progress within a round

    @classmethod
    def open(cls, spec: TrialSpec, store: LineageStore, opts: Optional[RunOptions] = None,
             where: Optional[dict] = None) -> "LineageContext":
        """Verify what is committed, claim the lineage and prepare its next
        round's data and network (a finished lineage is only verified)."""
        where = dict(where or {})
        where.setdefault("node", socket.gethostname())
        where.setdefault("gpu_ids", [])
        ctx = cls(spec, store, opts or RunOptions(), where)
        held_out = held_out_fraction(spec, store)  # an old sweep's lineage keeps its validation images
        store.write_spec(spec.to_dict())
        if ctx.method.parent:
            ctx.parent = _finished_parent(spec, store)
        ctx.done, ctx._verified = _verified_prefix(store)
        store.clear_partials_before(ctx.done)
        if ctx.done == spec.num_rounds:
            return ctx
        ctx.device = pick_device(ctx.opts, where)
        # Before claiming: an attempt that must stop takes nothing over. The
        # weights' dtype is the one the model is built in below.
        dtype = torch.float64 if ctx.opts.float64 else torch.get_default_dtype()
        check_precision(ctx, {k: (man.get("metrics") or {}).get("numerics")
                              for k, man in store.manifests().items() if k < ctx.done},
                        numerics_of(spec, ctx.device, dtype))
        ctx.token = store.claim(where)
        ctx.prep = prepare(spec, ctx.opts, ctx.device, held_out)
        # float64 only for equivalence checks (RunOptions.float64): the same
        # initial values, exactly widened.
        ctx.model = ctx.method.model(spec, ctx.info, ctx.opts).to(
            ctx.device, torch.float64 if ctx.opts.float64 else None)
        ctx.names = pruning.prunable_names(ctx.model, spec.prune.prunable)
        return ctx

    def finish(self) -> list[dict]:
        if self.token is not None:
            self.store.clear_marker("HEARTBEAT.json")
        return [self.store.read_manifest(k)["metrics"] for k in range(self.spec.num_rounds)]

    # --- what methods read (workers/methods/base.py) ------------------------
    def previous(self, k: int) -> tuple[dict, dict]:
        """Committed round k's trained weights and masks, verified; masks on the
        device in model order (it fixes the prune's tie-breaking and the order
        of the per-layer table)."""
        files = self._verified.pop(k, None) or checkpoint.load_files(self.store, k)
        try:
            state, masks = checkpoint.decode_files(files)  # either format (workers/checkpoint.py)
        except ValueError as e:
            raise CorruptRound(f"round {k} of trial {self.store.trial_id}: {e}") from None
        return state, {n: masks[n].to(self.device) for n in self.names}

    def rewind_state(self) -> dict:
        """Round 0's committed rewind state, read (and verified) once."""
        if self._rewind is None:
            files = self._verified.pop("rewind", None) or self.store.load_round(0, [checkpoint.REWIND])
            self._rewind = st_load(files[checkpoint.REWIND])
        return self._rewind

    def parent_masks(self, k: int) -> dict:
        packed = self.parent.load_round(k, [checkpoint.MASK])[checkpoint.MASK]
        masks = pruning.unpack_masks(st_load(packed))
        return {n: masks[n].to(self.device) for n in self.names}

    def generator(self, k: int) -> torch.Generator:
        """The seeded CPU generator of round k's random mask draws."""
        return torch.Generator().manual_seed(seed_for(self.spec.seed, k, PRUNE))


def check_precision(ctx: LineageContext, recorded: dict, attempt: dict, what: str = "") -> None:
    """Stop (PrecisionChange) when rounds of `recorded` ({round: numerics}) ran in another precision
    than `attempt` would, unless the options allow it: the seeds of a cell are replicates of one
    arithmetic, and a lineage mixing two would silently be one of neither."""
    now = precision_of(attempt)
    known = rounds_with_numerics(recorded, precision_of)
    if all(precision_of(n) == now for n in known.values()):
        return
    runs: list[list] = []  # [first, last, precision, device] of consecutive rounds alike
    for k, n in known.items():
        how = [precision_of(n), n.get("device")]
        if runs and runs[-1][2:] == how and runs[-1][1] == k - 1:
            runs[-1][1] = k
        else:
            runs.append([k, k, *how])
    before = ", ".join(f"round{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}{what} ran in {p} on {d}"
                       for a, b, p, d in runs)
    cell = "+".join(sorted({p for _, _, p, _ in runs} | {now}))
    if ctx.opts.allow_precision_change:
        log.warning("trial %s: %s; continuing in %s on %s as allowed (its cell becomes %s)",
                    ctx.store.trial_id, before, now, attempt["device"], cell)
        return
    # Short enough to survive the driver's one-line summary of a failed trial (200 characters).
    raise PrecisionChange(f"trial {ctx.store.trial_id}: {before}, this attempt in {now} on {attempt['device']}; "
                          f"--allow-precision-change continues it (its cell becomes {cell})")


def _finished_parent(spec: TrialSpec, store: LineageStore) -> LineageStore:
    pspec = parent_spec(spec)
    parent = store.sweep.lineage(pspec.trial_id)
    have = parent.committed_prefix()
    if have < spec.num_rounds:
        raise ParentMissing(
            f"{spec.prune.method} trial {store.trial_id} is built from the {pspec.prune.method} lineage "
            f"{pspec.trial_id} of the same grid point, which has {have}/{spec.num_rounds} rounds committed in "
            f"this sweep; add {pspec.prune.method} to the experiment's methods (the driver runs it first)")
    return parent


def _verified_prefix(store: LineageStore) -> tuple[int, dict]:
    """(length, files read) of the committed prefix to trust: the one whose files read again (round 0's
    rewind state, the newest round's weights and mask) verify. A corrupt round is redone from the round
    before it, never silently from round 0; the files ({"rewind": ..., k - 1: ...}) are not read twice."""
    while True:
        k = store.committed_prefix()
        if k == 0:
            return 0, {}
        try:
            rewind = store.load_round(0, [checkpoint.REWIND])
        except CorruptRound as e:
            log.warning("%s: redoing the lineage from round 0", e)
            store.invalidate_from(0)
            continue
        try:
            last = checkpoint.load_files(store, k - 1)  # its weights in either format
        except CorruptRound as e:
            log.warning("%s: redoing it from round %d", e, k - 2)
            store.invalidate_from(k - 1)
            continue
        store.sync_pointer()  # the manifests just read are the truth the restart's pointer must say
        return k, {"rewind": rewind, k - 1: last}
