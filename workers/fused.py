"""Fused training: K same-shape IMP rounds trained as one program on one device.

    fused = FusedTrainer([trainer_a, trainer_b, ...])   # solo Trainers, already built
    rows = fused.train_epoch(round_k, epoch)             # == [t.train_epoch(round_k, epoch) for t in ...]
    # the members' own modules and optimizers now hold the trained state:
    trainer_a.momentum_state(), trainer_a.model.state_dict(), trainer_a.accuracy(x, y), ...

The fused network is workers/fused_net.py and workers/fused_layers.py; this
module is which members fuse, the fused copy of their state, its steps and the write-back.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from workers import data
from workers import pruning
from workers.fused_net import FuseError, _structure_reason, conv_strategy, fuse_models
from workers.train import Solo, Trainer, run_epoch

__all__ = ["FuseError", "FusedTrainer", "can_fuse", "conv_strategy", "fuse_models"]


_SGD_KEYS = ("momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
             "fused")
# What fused members must share (the learning rate is set per epoch: lr_at, checked then).
_SHARED = {"batch size": lambda t: t.spec.train.batch_size,
           "training images": lambda t: tuple(t.prep.x_train.shape),
           "train spec": lambda t: t.spec.train,
           "device": lambda t: t.prep.device,
           "autocast/channels_last/dtype": lambda t: (t.autocast, t.channels_last, t.dtype),
           "classes": lambda t: t.prep.info.num_classes,
           "optimizer hyper-parameters": lambda t: [t.opt.param_groups[0].get(k) for k in _SGD_KEYS]}


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
        if any(p.device != t.prep.device for p in t.model.parameters()):
            return f"member {i}: model not on {t.prep.device}"
        if len(list(t.model.named_parameters(remove_duplicate=False))) != len(list(t.model.parameters())):
            return f"member {i}: tied (shared) parameters do not fuse"
    for i, t in enumerate(ts[1:], 1):
        for what, get in _SHARED.items():
            if get(t) != get(t0):
                return f"member {i}: {what} {get(t)} != {get(t0)}"
    if t0.opt.param_groups[0].get("dampening", 0) != 0:  # a missing momentum buffer fuses as zeros (reload)
        return "SGD with dampening does not fuse"
    reason = _structure_reason([t.model for t in ts])
    if reason:
        return reason
    for i, t in enumerate(ts[1:], 1):
        if set(t.masks()) != set(t0.masks()):
            return f"member {i}: a different set of prunable (masked) weights"
    return None


class FusedTrainer:
    """K solo `Trainer`s trained as one program. Its state is a copy, read from the members at
    construction and by `reload()`, written back to their modules and momentum buffers after every
    `train_epoch` and by `sync_back()`: everything downstream (checkpoints, evaluation, pruning) uses
    the members' own objects; a change to a member in between is lost at the next write-back.
    `conv`: "grouped", "loop" or "auto" (`conv_strategy`)."""

    def __init__(self, trainers: Sequence[Trainer], conv: str = "auto"):
        reason = can_fuse(trainers)
        if reason:
            raise FuseError(reason)
        self.trainers = list(trainers)
        t0 = self.trainers[0]
        self.K = len(self.trainers)
        # The members' device and numerics, layout included (can_fuse checked they agree).
        self.device, self.autocast, self.channels_last = t0.prep.device, t0.autocast, t0.channels_last
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
        masks = [t.masks() for t in self.trainers]
        self._mask_params = [fp[n] for n in masks[0]]
        self._mask_members = [[m[n] for m in masks] for n in masks[0]]
        self.sparse = any(t.sparse for t in self.trainers)
        self.reload()

    def _slots(self, which) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(fused slot, member tensor) of every parameter and stacked buffer of the members `which`."""
        return [(f[i], ms[i].detach()) for f, ms in self._params + self._buffers for i in which]

    @torch.no_grad()
    def reload(self, members: Optional[Sequence[int]] = None) -> None:
        """(Re)read members' parameters, buffers and momentum into their slots (all, and the masks, by default)."""
        which = range(self.K) if members is None else list(members)
        pairs = self._slots(which)
        torch._foreach_copy_([f for f, _ in pairs], [m for _, m in pairs])
        if members is None:
            # In the fused weight's dtype and layout: a plain foreach multiply.
            self._masks = [torch.empty_like(p) for p in self._mask_params]
            for m, ms in zip(self._masks, self._mask_members):
                for i, mi in enumerate(ms):
                    m[i].copy_(mi)
            self.opt.state.clear()
        for f, ms in self._params:
            bufs = {i: self.trainers[i].opt.state.get(ms[i], {}).get("momentum_buffer") for i in which}
            have = self.opt.state.get(f, {}).get("momentum_buffer")
            if have is None and all(b is None for b in bufs.values()):
                continue
            # A missing buffer is a zero one: without dampening (can_fuse), 0 * momentum + g
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
        """Write the fused state into members' own modules and momentum buffers (all by default)."""
        which = range(self.K) if members is None else list(members)
        pairs = self._slots(which)
        dst, src = [m for _, m in pairs], [f for f, _ in pairs]
        for f, ms in self._params:
            buf = self.opt.state.get(f, {}).get("momentum_buffer")
            if buf is None:
                continue
            for i in which:
                st = self.trainers[i].opt.state[ms[i]]
                mb = st.get("momentum_buffer")
                if mb is None or mb.shape != ms[i].shape:
                    mb = st["momentum_buffer"] = torch.empty_like(ms[i], memory_format=torch.preserve_format)
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
        """MaskApplier.apply for every member (a method: bench/fuse_mutations.py patches it)."""
        pruning.apply_masks(self._mask_params, self._masks, self.opt)

    end = sync_back  # hands the trained state to the `active` members

    def train_epoch(self, round_k: int, epoch: int, active: Optional[Sequence[int]] = None) -> list:
        """`[t.train_epoch(round_k, epoch) for t in trainers]` through `run_epoch` (a failed member's
        entry is its exception), handed back to the `active` members (default all; the others' slots
        train too: workers/group.py)."""
        return run_epoch(self, round_k, epoch, None if active is None else list(active))
