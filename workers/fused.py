"""Fused training: K same-shape IMP rounds trained as one program on one device.

    fused = FusedTrainer([trainer_a, trainer_b, ...])   # solo Trainers, already built
    rows = fused.train_epoch(round_k, epoch)             # == [t.train_epoch(round_k, epoch) for t in ...]
    # the members' own modules and optimizers now hold the trained state:
    trainer_a.momentum_state(), trainer_a.model.state_dict(), trainer_a.accuracy(x, y), ...

The fused network (how each layer fuses, why not vmap, the kernels' numerics)
is workers/fused_net.py and workers/fused_layers.py; this module is the
program: which members fuse, the fused copy of their state (parameters,
BatchNorm buffers, SGD momentum), its steps and the write-back.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from workers import data
from workers import pruning
from workers.fused_net import (CONV_STRATEGIES, FuseError, _structure_reason, conv_strategy,  # noqa: F401
                               fuse_models)
from workers.train import Solo, Trainer, run_epoch

__all__ = ["CONV_STRATEGIES", "FuseError", "FusedTrainer", "can_fuse", "conv_strategy", "fuse_models"]


_SGD_KEYS = ("momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
             "fused")


def can_fuse(trainers: Sequence[Trainer]) -> Optional[str]:
    """Why these solo Trainers cannot train as one fused program (one line), or None when they can."""
    ts = list(trainers)
    if not ts:
        return "no members"
    if len({id(t) for t in ts}) < len(ts) or len({id(t.model) for t in ts}) < len(ts):
        return "the same trainer or model appears twice"
    t0 = ts[0]
    for i, t in enumerate(ts):
        if t.forward is not t.model:
            return f"member {i}: a compiled forward (RunOptions.compile) does not fuse"
        if len(t.opt.param_groups) != 1:
            return f"member {i}: optimizer with {len(t.opt.param_groups)} parameter groups"
        if not isinstance(t.opt, torch.optim.SGD):
            return f"member {i}: optimizer {type(t.opt).__name__}, only SGD fuses"
    for i, t in enumerate(ts[1:], 1):
        a, b = t0.spec.train, t.spec.train
        if a.batch_size != b.batch_size:
            return f"member {i}: batch size {b.batch_size} != {a.batch_size}"
        if t.prep.x_train.shape[0] != t0.prep.x_train.shape[0]:
            return f"member {i}: {t.prep.x_train.shape[0]} training images != {t0.prep.x_train.shape[0]}"
        if t.prep.x_train.shape[1:] != t0.prep.x_train.shape[1:]:
            return (f"member {i}: image shape {tuple(t.prep.x_train.shape[1:])} != "
                    f"{tuple(t0.prep.x_train.shape[1:])}")
        if a != b:
            return f"member {i}: train spec differs ({b} vs {a})"
        if t.prep.device != t0.prep.device:
            return f"member {i}: device {t.prep.device} != {t0.prep.device}"
        if (t.autocast, t.channels_last, t.dtype) != (t0.autocast, t0.channels_last, t0.dtype):
            return f"member {i}: autocast/channels_last/dtype differ"
        if t.prep.info.num_classes != t0.prep.info.num_classes:
            return f"member {i}: {t.prep.info.num_classes} classes != {t0.prep.info.num_classes}"
        g, g0 = t.opt.param_groups[0], t0.opt.param_groups[0]
        if any(g.get(k) != g0.get(k) for k in _SGD_KEYS):  # lr: set per epoch (lr_at, checked then)
            return f"member {i}: optimizer hyper-parameters differ"
    if t0.opt.param_groups[0].get("dampening", 0) != 0 and len(
            {_has_momentum(t) for t in ts}) > 1:
        return "members differ in having momentum buffers and dampening != 0"
    for i, t in enumerate(ts):
        if any(p.device != t0.prep.device for p in t.model.parameters()):
            return f"member {i}: model not on {t0.prep.device}"
        n_all = len(list(t.model.named_parameters(remove_duplicate=False)))
        if n_all != len(list(t.model.parameters())):
            return f"member {i}: tied (shared) parameters do not fuse"
    reason = _structure_reason([t.model for t in ts])
    if reason:
        return reason
    for i, t in enumerate(ts[1:], 1):
        if set(_mask_names(t)) != set(_mask_names(t0)):
            return f"member {i}: a different set of prunable (masked) weights"
    return None


def _mask_names(t: Trainer) -> list[str]:
    return [t.names[p] for p in t.masker.params]


def _has_momentum(t: Trainer) -> bool:
    return any(st.get("momentum_buffer") is not None for st in t.opt.state.values())


class FusedTrainer:
    """K solo `Trainer`s trained as one program; see the module docstring.

    The fused state is a copy, read from the members at construction (and by
    `reload()`) and written back to their modules and SGD momentum buffers at
    the end of every `train_epoch` (and by `sync_back()`), so everything
    downstream (checkpoints, evaluation, pruning) keeps using the members' own
    objects; a change to a member in between is lost at the next write-back.
    `conv`: "grouped", "loop" or "auto" (`conv_strategy`).
    """

    def __init__(self, trainers: Sequence[Trainer], conv: str = "auto"):
        reason = can_fuse(trainers)
        if reason:
            raise FuseError(reason)
        self.trainers = list(trainers)
        t0 = self.trainers[0]
        self.K = len(self.trainers)
        self.device = t0.prep.device
        self.autocast = t0.autocast
        # The layout the members' solo networks run in (can_fuse checked they agree).
        self.channels_last = t0.channels_last
        self.conv = conv_strategy(conv, self.device, t0.prep.info.image_size)
        self.model = fuse_models([t.model for t in self.trainers], self.conv)
        # (fused tensor [K, ...], [member tensors]) by name: parameters, then stacked buffers.
        fp, fb = dict(self.model.named_parameters()), dict(self.model.named_buffers())
        mparams = [dict(t.model.named_parameters()) for t in self.trainers]
        mbufs = [dict(t.model.named_buffers()) for t in self.trainers]
        self._params = [(fp[n], [mp[n] for mp in mparams]) for n in mparams[0]]
        self._buffers = [(fb[n], [mb[n] for mb in mbufs]) for n in mbufs[0]
                         if mbufs[0][n] is not None and fb[n].shape == (self.K, *mbufs[0][n].shape)]
        g = t0.opt.param_groups[0]
        self.opt = torch.optim.SGD([f for f, _ in self._params], lr=g["lr"],
                                   **{k: g[k] for k in _SGD_KEYS if k in g})
        names = _mask_names(t0)
        self._mask_params = [fp[n] for n in names]
        self._mask_members = [[t.masker.masks[_mask_names(t).index(n)] for t in self.trainers] for n in names]
        self.sparse = any(t.sparse for t in self.trainers)
        self.reload()

    def _slots(self, which) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(fused slot, member tensor) of every parameter and stacked buffer of the members `which`."""
        return [(f[i], ms[i].detach()) for f, ms in self._params + self._buffers for i in which]

    @torch.no_grad()
    def reload(self, members: Optional[Sequence[int]] = None) -> None:
        """(Re)read members' parameters, BatchNorm buffers and SGD momentum buffers
        into their slots of the fused copy (all members, and their masks, by default)."""
        which = range(self.K) if members is None else list(members)
        pairs = self._slots(which)
        torch._foreach_copy_([f for f, _ in pairs], [m for _, m in pairs])
        if members is None:
            self._masks = []
            for p, ms in zip(self._mask_params, self._mask_members):
                m = torch.empty_like(p)  # the fused weight's dtype and layout: a plain foreach multiply
                for i, mi in enumerate(ms):
                    m[i].copy_(mi)
                self._masks.append(m)
            self.opt.state.clear()
        damp = self.opt.param_groups[0].get("dampening", 0)
        for f, ms in self._params:
            bufs = {i: self.trainers[i].opt.state.get(ms[i], {}).get("momentum_buffer") for i in which}
            have = self.opt.state.get(f, {}).get("momentum_buffer")
            if have is None and all(b is None for b in bufs.values()):
                continue
            if damp != 0 and (any(b is None for b in bufs.values()) or (have is None and len(bufs) < self.K)):
                raise FuseError("members differ in having momentum buffers and dampening != 0")
            # A missing buffer is a zero one: with dampening 0, 0 * momentum + g
            # is exactly the g SGD starts a new buffer with.
            if have is None:
                have = self.opt.state[f]["momentum_buffer"] = torch.zeros_like(f, memory_format=torch.preserve_format)
            for i, b in bufs.items():
                if b is None:
                    have[i].zero_()
                else:
                    have[i].copy_(b)

    @torch.no_grad()
    def sync_back(self, members: Optional[Sequence[int]] = None) -> None:
        """Write the fused state into members' own modules (parameters, BatchNorm
        buffers) and their own `opt` momentum buffers (one foreach copy); all
        members by default."""
        which = range(self.K) if members is None else list(members)
        pairs = self._slots(which)
        dst, src = [m for _, m in pairs], [f for f, _ in pairs]
        for f, ms in self._params:
            buf = self.opt.state.get(f, {}).get("momentum_buffer")
            if buf is None:
                continue
            for i in which:
                t, m = self.trainers[i], ms[i]
                st = t.opt.state[m]
                mb = st.get("momentum_buffer")
                if mb is None or mb.shape != m.shape:
                    mb = st["momentum_buffer"] = torch.empty_like(m, memory_format=torch.preserve_format)
                dst.append(mb)
                src.append(buf[i])
        torch._foreach_copy_(dst, src)

    def _inputs(self, xbs: list[torch.Tensor]) -> torch.Tensor:
        """The members' uint8 batches -> normalised [B, K*C, H, W] on the device."""
        if self.K == 1:  # exactly the solo input, layout included
            return self.trainers[0]._inputs(xbs[0])
        infos = [t.prep.info for t in self.trainers]
        dev = self.device
        if all((i.mean, i.std) == (infos[0].mean, infos[0].std) for i in infos):
            # Stack, then normalise once: the same elementwise ops as each
            # member's own _inputs, so the same values.
            x = data.normalize(torch.stack([xb.to(dev, non_blocking=True) for xb in xbs], 1), infos[0])
            x = x.flatten(1, 2)
        else:
            x = torch.cat([data.normalize(xb.to(dev, non_blocking=True), i) for xb, i in zip(xbs, infos)], 1)
        x = x.to(self.trainers[0].dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # --- the program run_epoch drives (workers/train.py's Solo has the same) ----------
    def begin(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        for t in self.trainers:  # as the solo loop leaves them
            Solo(t).begin(lr)
        self.model.train()

    def forward(self, xbs: list[torch.Tensor]) -> torch.Tensor:
        return self.model(self._inputs(xbs))

    def step(self, loss: torch.Tensor) -> None:
        """Member i's loss depends on member i's parameters only: the gradient
        of the summed losses is, member by member, the solo gradient."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.sparse:
            self._apply_masks()

    def _apply_masks(self) -> None:
        """MaskApplier.apply for all members: weights, then momentum buffers (bench/fuse_mutations.py
        patches it)."""
        pruning.apply_masks(self._mask_params, self._masks, self.opt)

    end = sync_back  # hands the trained state to the `active` members

    def train_epoch(self, round_k: int, epoch: int, active: Optional[Sequence[int]] = None) -> list:
        """`[t.train_epoch(round_k, epoch) for t in trainers]`, fused, through `run_epoch` (a failed
        member's entry is its exception), written back to the `active` members (default all); an
        inactive member's slot still trains (workers/group.py: why)."""
        return run_epoch(self, round_k, epoch, None if active is None else list(active))
