"""Fusion bugs on purpose: what the fusion self-check (workers/fusecheck.py)
must catch. Each mutation changes workers/fused.py's FusedTrainer for as long
as `mutated(name)` is entered; tests/workers/test_fusecheck.py and
bench/gpu_check.py (on the device) check that every one fails the check and
the unmutated program passes it. Needs three or more members (momentum swaps
members 0 and 2) and a sparse member 1."""
from __future__ import annotations

import contextlib

from workers.fused import FusedTrainer


def _no_masks_for_member_1(real):
    def apply(self):
        saved = [m[1].clone() for m in self._masks]
        for m in self._masks:
            m[1].fill_(1)
        real(self)
        for m, keep in zip(self._masks, saved):
            m[1].copy_(keep)
    return apply


def _momentum_of_members_0_and_2_swapped(real):
    def reload(self, members=None):
        real(self, members)
        for f, _ in self._params:
            buf = self.opt.state.get(f, {}).get("momentum_buffer")
            if buf is not None:
                first = buf[0].clone()
                buf[0].copy_(buf[2])
                buf[2].copy_(first)
    return reload


def _stale_learning_rate(real):
    def begin(self, lr):  # the members get the epoch's rate, the fused optimizer keeps the initial one
        real(self, lr)
        for g in self.opt.param_groups:
            g["lr"] = self.trainers[0].spec.train.lr
    return begin


def _data_of_members_0_and_1_swapped(real):
    return lambda self, xbs: real(self, [xbs[1], xbs[0], *xbs[2:]])


MUTATIONS = {"masks": ("_apply_masks", _no_masks_for_member_1),
             "momentum": ("reload", _momentum_of_members_0_and_2_swapped),
             "learning rate": ("begin", _stale_learning_rate),
             "data": ("forward", _data_of_members_0_and_1_swapped)}


@contextlib.contextmanager
def mutated(name: str):
    attr, mutate = MUTATIONS[name]
    real = getattr(FusedTrainer, attr)
    setattr(FusedTrainer, attr, mutate(real))
    try:
        yield
    finally:
        setattr(FusedTrainer, attr, real)
