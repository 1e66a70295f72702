"""Fused training: K same-shape IMP rounds trained as one program on one device.

    fused = FusedTrainer([trainer_a, trainer_b, ...])   # solo Trainers, already built
    rows = fused.train_epoch(round_k, epoch)             # == [t.train_epoch(round_k, epoch) for t in ...]
    # the members' own modules and optimizers now hold the trained state:
    trainer_a.momentum_state(), trainer_a.model.state_dict(), trainer_a.accuracy(x, y), ...

Why not torch.func.vmap. The torch.func docs ("Patching Batch Norm") say
BatchNorm's in-place running-stat update is unsupported under vmap when the
input is batched and the buffers are not, and every documented fix
(track_running_stats=False, replace_all_batch_norm_modules_) drops the
running statistics, which eval mode needs here. With *stacked* buffers
(stack_module_state + functional_call) the update does go through, per
member and exactly (checked while writing this), but vmap then lowers each
conv to a grouped conv anyway, the profile of a K=8 ResNet-18 step shows
extra layout copies and per-BatchNorm multiplies/adds on top (a vmapped step
ran 4x as long as the 8 solo ones on CPU), and nothing in it can be steered:
memory format, conv algorithm. So the members are fused explicitly, HFTA
style (Wang et al., "Horizontally Fused Training Array", MLSys 2021):

- activations are [B, K*C, H, W]: member i owns channels [i*C, (i+1)*C);
- Conv2d(C, O, groups=g): one conv with groups K*g over the concatenated
  channels, weight [K, O, C/g, k, k] viewed as [K*O, ...] (`conv="grouped"`),
  or the members' own convs on their channel slices (`conv="loop"`);
- BatchNorm2d(C): one BatchNorm over K*C channels, which gives per-member
  batch statistics and per-member running statistics ([K, C] buffers whose
  [K*C] views the kernel updates in place, as each solo BatchNorm does);
- Linear / TvMFHead: a batched matmul over the members (or, "loop", theirs);
- HarmonicConv2d: the fixed DCT stage as one depthwise conv (or per member),
  the learned 1x1 mix as a fused conv;
- parameter-free layers (ReLU, pools, zero padding) act per channel already.

A container module (ResNet, BasicBlock, Sequential, ...) keeps its own
forward; every leaf must have a fused form (`can_fuse` names one that does
not). Member i's loss depends on member i's parameters only, so the gradient
of the summed per-member mean losses is, member by member, the solo gradient.

Numerics. The data order, augmentation draws, masks and SGD arithmetic are
the solo ones exactly. "grouped" kernels (and BatchNorm over K*C channels)
reduce in another order than solo: results agree to float rounding (~1e-7
relative per op in fp32), not bit for bit; an ill-conditioned network
compounds that (a tiny MobileNetV2's one-step gradients: 5e-4 relative on
one CPU, 3% on another; in float64 ~1e-17). "loop" runs the solo kernels and,
on CPU, where every batch is NCHW (workers.data.normalize), gives the solo
bits (measured: ResNet-18 in every variant, VGG-16, t-vMF; not
MobileNetV2, whose 1x1 maps make the gradients' layout ambiguous).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers import data
from workers import pruning
from workers.losses import TvMFHead, at_least_fp32, full_precision, tvmf_similarity
from workers.models.variants import HarmonicConv2d
from workers.models.vgg import MaxPoolIfLarge
from workers.train import Trainer, run_epoch

__all__ = ["CONV_STRATEGIES", "FuseError", "FusedTrainer", "can_fuse", "conv_strategy", "fuse_models"]

CONV_STRATEGIES = ("auto", "grouped", "loop")

# Layers with no parameters that act on each channel (or only on H, W): they
# are already correct on channel-concatenated members.
_PER_CHANNEL = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, MaxPoolIfLarge, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.ZeroPad2d, nn.Identity)
# Layers that draw from the global RNG in training: each member would need
# its own stream, which one fused call cannot give.
_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU)


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class FuseError(ValueError):
    """Members that cannot be fused (one-line reason)."""


# --- fused layers ------------------------------------------------------------------

def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """[K, *shape] in the members' layout: slice i has member i's strides, and
    for channels_last 4-D members the [K*O, I, h, w] view a grouped conv uses
    is channels_last too. (The layout steers the CPU conv's algorithm: keeping
    it is what keeps `conv="loop"` on the solo kernels.)"""
    t0 = tensors[0]
    if t0.dim() == 4 and not t0.is_contiguous() and t0.is_contiguous(memory_format=torch.channels_last):
        K, (O, I, h, w) = len(tensors), t0.shape
        out = torch.empty((K, O, h, w, I), dtype=t0.dtype, device=t0.device).permute(0, 1, 4, 2, 3)
    else:
        out = torch.empty((len(tensors), *t0.shape), dtype=t0.dtype, device=t0.device)
    with torch.no_grad():
        for i, t in enumerate(tensors):
            out[i].copy_(t)
    return out


def _param(members: Sequence[nn.Module], name: str) -> Optional[nn.Parameter]:
    ps = [getattr(m, name) for m in members]
    if ps[0] is None:
        return None
    return nn.Parameter(_stack([p.detach() for p in ps]), requires_grad=ps[0].requires_grad)


def _weight_and_bias(fused: nn.Module, members: Sequence[nn.Module]) -> None:
    """The members' `weight` and `bias` (or none) stacked as the fused layer's parameters."""
    fused.weight = _param(members, "weight")
    bias = _param(members, "bias")
    if bias is None:
        fused.register_parameter("bias", None)
    else:
        fused.bias = bias


def _layout(x: torch.Tensor):
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format


def _slices(x: torch.Tensor, K: int) -> list[torch.Tensor]:
    """The members' channel slices of x, each a dense tensor in x's own layout:
    a kernel picks its algorithm (and so its rounding) by its operands'
    strides, and the solo kernel saw a dense tensor."""
    fmt = _layout(x)
    return [xi.contiguous(memory_format=fmt) for xi in x.chunk(K, 1)]


class _CatDenseGrad(torch.autograd.Function):
    """torch.cat on dim 1 whose backward hands each member a dense gradient
    (plain cat hands out strided views of one big gradient, and the CPU
    BatchNorm backward then reduces in another order than solo's)."""

    @staticmethod
    def forward(ctx, *xs):
        ctx.sizes = [x.shape[1] for x in xs]
        return torch.cat(xs, 1)

    @staticmethod
    def backward(ctx, g):
        fmt = _layout(g)
        return tuple(gi.contiguous(memory_format=fmt) for gi in g.split(ctx.sizes, 1))


def _cat(outs: list[torch.Tensor]) -> torch.Tensor:
    """The members' outputs side by side on dim 1 (one member: as it is, so
    its layout stays the solo one)."""
    return outs[0] if len(outs) == 1 else _CatDenseGrad.apply(*outs)


class FusedConv2d(nn.Module):
    """K members' Conv2d on [B, K*C_in, H, W] -> [B, K*C_out, H', W']."""

    def __init__(self, members: Sequence[nn.Conv2d], strategy: str = "grouped"):
        super().__init__()
        m = members[0]
        self.K = len(members)
        self.in_channels, self.out_channels, self.groups = m.in_channels, m.out_channels, m.groups
        self.stride, self.padding, self.dilation = m.stride, m.padding, m.dilation
        _weight_and_bias(self, members)
        self.strategy = strategy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K = self.K
        if self.strategy == "grouped":
            b = None if self.bias is None else self.bias.flatten()
            return F.conv2d(x, self.weight.flatten(0, 1), b, self.stride, self.padding, self.dilation,
                            self.groups * K)
        bs = [None] * K if self.bias is None else self.bias.unbind(0)
        return _cat([F.conv2d(xi, w, b, self.stride, self.padding, self.dilation, self.groups)
                     for xi, w, b in zip(_slices(x, K), self.weight.unbind(0), bs)])

    def extra_repr(self) -> str:
        return (f"K={self.K}, {self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, strategy={self.strategy}")


class FusedBatchNorm2d(nn.Module):
    """K members' BatchNorm2d as one over K*C channels: per-member batch and
    running statistics (the buffers are [K, C]; the kernel updates their
    [K*C] views in place, exactly as each solo BatchNorm updates its own).
    "loop": each member's own batch_norm call on its channel slice, the solo
    kernel: the CPU kernel's vector loop depends on the channel count, so a
    call over K*C channels (MobileNetV2's 2-4 channel blocks: 6-12) rounds
    the tail differently from K calls over C."""

    def __init__(self, members: Sequence[nn.BatchNorm2d], strategy: str = "grouped"):
        super().__init__()
        m = members[0]
        self.strategy = strategy
        self.K, self.num_features = len(members), m.num_features
        self.eps, self.momentum = m.eps, m.momentum
        self.affine, self.track_running_stats = m.affine, m.track_running_stats
        if m.affine:
            self.weight, self.bias = _param(members, "weight"), _param(members, "bias")
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if m.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, _stack([getattr(x, name) for x in members]))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d.forward with momentum a float (FusedTrainer refuses None).
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        use_batch = self.training or not self.track_running_stats
        rm = None if self.running_mean is None else self.running_mean.view(-1)
        rv = None if self.running_var is None else self.running_var.view(-1)
        w = None if self.weight is None else self.weight.view(-1)
        b = None if self.bias is None else self.bias.view(-1)
        if self.strategy != "loop" or self.K == 1:
            return F.batch_norm(x, rm, rv, w, b, use_batch, self.momentum, self.eps)
        parts = [None if t is None else t.chunk(self.K) for t in (rm, rv, w, b)]
        return _cat([F.batch_norm(xi, *(None if p is None else p[i] for p in parts), use_batch, self.momentum,
                                  self.eps) for i, xi in enumerate(_slices(x, self.K))])


class FusedLinear(nn.Module):
    """K members' Linear: [B, K*F] -> [B, K*N]: one batched matmul ("grouped"),
    or each member's own F.linear ("loop", the solo kernel)."""

    def __init__(self, members: Sequence[nn.Linear], strategy: str = "grouped"):
        super().__init__()
        m = members[0]
        self.K, self.in_features, self.out_features = len(members), m.in_features, m.out_features
        self.strategy = strategy
        _weight_and_bias(self, members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.strategy == "loop":
            bs = [None] * self.K if self.bias is None else self.bias.unbind(0)
            return _cat([F.linear(xi, w, b) for xi, w, b in
                         zip(_slices(x.reshape(B, -1), self.K), self.weight.unbind(0), bs)])
        xk = x.reshape(B, self.K, self.in_features).transpose(0, 1)  # [K, B, F]
        wt = self.weight.transpose(1, 2)  # [K, F, N]
        out = torch.bmm(xk, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xk, wt)
        return out.transpose(0, 1).reshape(B, self.K * self.out_features)


class FusedTvMFHead(nn.Module):
    """K members' TvMFHead (learned or fixed scale): [B, K*F] -> [B, K*N]."""

    def __init__(self, members: Sequence[TvMFHead], strategy: str = "grouped"):
        super().__init__()
        m = members[0]
        self.K, self.in_features, self.out_features = len(members), m.in_features, m.out_features
        self.strategy = strategy
        self.kappa, self.fixed_scale = m.kappa, m.fixed_scale
        self.weight = _param(members, "weight")
        if m.fixed_scale is None:
            self.scale_raw = _param(members, "scale_raw")  # [K, 1]
        else:
            self.register_parameter("scale_raw", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):  # as TvMFHead: the cosine in fp32 under autocast
            return self._forward(at_least_fp32(x))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.strategy == "loop":  # TvMFHead.forward, member by member
            ss = ([self.fixed_scale] * self.K if self.scale_raw is None
                  else (1.0 + F.softplus(self.scale_raw)).unbind(0))
            return _cat([s * tvmf_similarity(F.linear(F.normalize(xi, dim=1), F.normalize(at_least_fp32(w), dim=1))
                                             .clamp(-1.0, 1.0), self.kappa)
                         for xi, w, s in zip(_slices(x.reshape(B, -1), self.K), self.weight.unbind(0), ss)])
        xk = F.normalize(x.reshape(B, self.K, self.in_features), dim=2).transpose(0, 1)  # [K, B, F]
        wk = F.normalize(at_least_fp32(self.weight), dim=2)  # [K, N, F]
        cos = torch.bmm(xk, wk.transpose(1, 2)).clamp(-1.0, 1.0)  # [K, B, N]
        sim = tvmf_similarity(cos, self.kappa)
        if self.scale_raw is None:
            out = self.fixed_scale * sim
        else:
            # Each member's scale times its own [B, N] similarities, as solo: the
            # scale's gradient is then the solo reduction over B*N terms. One
            # broadcast multiply over [K, B, N] reduces it in another order, whose
            # rounding was 3-8x solo's (the fusion self-check's rule is 4x).
            out = torch.stack([(1.0 + F.softplus(r)) * m for r, m in zip(self.scale_raw, sim.unbind(0))])
        return out.transpose(0, 1).reshape(B, self.K * self.out_features)


class FusedHarmonicConv2d(nn.Module):
    """K members' HarmonicConv2d: the fixed DCT stage is one depthwise conv over
    K*C_in channels (the basis is the same constant in every member), then the
    members' 1x1 mixes as a FusedConv2d."""

    def __init__(self, members: Sequence[HarmonicConv2d], strategy: str = "grouped"):
        super().__init__()
        m = members[0]
        self.K, self.in_channels, self.out_channels = len(members), m.in_channels, m.out_channels
        self.stride, self.padding = m.stride, m.padding
        self.strategy = strategy
        self.register_buffer("basis", m.basis.detach().clone())  # shared, never trained
        self.mix = FusedConv2d([x.mix for x in members], strategy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strategy == "loop":  # HarmonicConv2d.forward's DCT stage per member
            c = self.in_channels
            w = self.basis.to(x.dtype).repeat(c, 1, 1, 1)
            y = _cat([F.conv2d(xi, w, None, self.stride, self.padding, groups=c)
                      for xi in _slices(x, self.K)])
            return self.mix(y)
        n = self.K * self.in_channels
        w = self.basis.to(x.dtype).repeat(n, 1, 1, 1)
        return self.mix(F.conv2d(x, w, None, self.stride, self.padding, groups=n))


# --- building the fused model --------------------------------------------------------

def _leaf_reason(mods: Sequence[nn.Module], path: str) -> Optional[str]:
    """Why the same-path modules of the members cannot be fused as a leaf, or None."""
    m = mods[0]
    where = path or "<model>"
    if type(m) is nn.Conv2d:
        if m.padding_mode != "zeros":
            return f"{where}: Conv2d padding_mode {m.padding_mode!r} (only 'zeros' fuses)"
    elif type(m) is nn.BatchNorm2d:
        if m.track_running_stats and m.momentum is None:
            return f"{where}: BatchNorm with momentum None (cumulative average) does not fuse"
        if any((x.eps, x.momentum, x.affine, x.track_running_stats)
               != (m.eps, m.momentum, m.affine, m.track_running_stats) for x in mods):
            return f"{where}: BatchNorm settings differ between members"
    elif type(m) is TvMFHead:
        if any((x.kappa, x.fixed_scale) != (m.kappa, m.fixed_scale) for x in mods):
            return f"{where}: t-vMF heads differ in kappa or scale between members"
    elif type(m) is HarmonicConv2d:
        if any(not torch.equal(x.basis, m.basis) for x in mods):
            return f"{where}: harmonic DCT bases differ between members"
    elif type(m) is nn.Flatten:
        if m.start_dim != 1:
            return f"{where}: Flatten(start_dim={m.start_dim}) does not fuse (only start_dim=1)"
    return None


_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, TvMFHead, HarmonicConv2d, nn.Flatten)


def _structure_reason(mods: Sequence[nn.Module], path: str = "") -> Optional[str]:
    m = mods[0]
    where = path or "<model>"
    if any(type(x) is not type(m) for x in mods):
        return f"{where}: module types differ ({sorted({type(x).__name__ for x in mods})})"
    if any(getattr(m, h, None) for h in _HOOKS):
        return f"{where}: a module with hooks does not fuse (the fused module would not run them)"
    if isinstance(m, _STOCHASTIC):
        return (f"{where}: {type(m).__name__} draws from the global RNG in training, which cannot "
                f"be replicated per member")
    own = [n for n, v in list(m._parameters.items()) + list(m._buffers.items()) if v is not None]
    shapes = [[(n, tuple(getattr(x, n).shape), getattr(x, n).dtype, getattr(x, n).device) for n in own]
              for x in mods]
    if any(s != shapes[0] for s in shapes):
        return f"{where}: parameter/buffer shapes differ between members"
    if type(m) in _LEAVES:
        return _leaf_reason(mods, path)
    if type(m) in _PER_CHANNEL:
        return None
    children = [list(dict(x.named_children())) for x in mods]
    if not children[0] and type(m) is not nn.Sequential:  # an empty Sequential is the identity
        return f"{where}: no fused form for module type {type(m).__name__}"
    if own:
        return f"{where}: container {type(m).__name__} holds its own tensors {own}"
    if any(c != children[0] for c in children):
        return f"{where}: submodules differ between members"
    for name in children[0]:
        r = _structure_reason([x.get_submodule(name) for x in mods], f"{path}.{name}" if path else name)
        if r:
            return r
    return None


def _fuse(mods: Sequence[nn.Module], strategy: str) -> nn.Module:
    m = mods[0]
    t = type(m)
    if t is nn.Conv2d:
        return FusedConv2d(mods, strategy)
    if t is nn.BatchNorm2d:
        return FusedBatchNorm2d(mods, strategy)
    if t is nn.Linear:
        return FusedLinear(mods, strategy)
    if t is TvMFHead:
        return FusedTvMFHead(mods, strategy)
    if t is HarmonicConv2d:
        return FusedHarmonicConv2d(mods, strategy)
    if t in _PER_CHANNEL or t is nn.Flatten:
        return copy.deepcopy(m)  # parameter-free
    # A container: its own forward, the fused children. A shallow copy shares
    # nothing that matters (it holds no tensors of its own: checked).
    out = copy.copy(m)
    out._parameters, out._buffers = {}, {}
    out._modules = {name: _fuse([x.get_submodule(name) for x in mods], strategy)
                    for name in m._modules if m._modules[name] is not None}
    out._non_persistent_buffers_set = set()
    return out


SMALL_IMAGE = 16  # px: on CPU, "auto" fuses grouped up to this size


def conv_strategy(conv: str, device: torch.device, image_size: Optional[int] = None) -> str:
    """The strategy "auto" stands for (others are returned as they are).
    CUDA: grouped, one conv that fills the GPU K small convs leave idle (HFTA).
    CPU, measured with bench/fused.py (ResNet-18, K = 4 and 8): on 8 px
    images the step is per-op overhead, and grouped runs 1.15-1.7x solo while
    loop (chunk + K convs + cat) runs 0.7-1.2x; on 32 px oneDNN's grouped
    conv is slower than the K solo convs (grouped 0.4-0.9x, loop 0.7-0.8x),
    so loop there, which is also the solo kernels (the solo bits)."""
    if conv not in CONV_STRATEGIES:
        raise ValueError(f"unknown conv strategy {conv!r}; known: {list(CONV_STRATEGIES)}")
    if conv != "auto":
        return conv
    if device.type == "cuda" or (image_size is not None and image_size <= SMALL_IMAGE):
        return "grouped"
    return "loop"


def fuse_models(models: Sequence[nn.Module], conv: str = "auto") -> nn.Module:
    """One module computing all `models` on channel-concatenated inputs:
    [B, K*C, H, W] -> [B, K*N]. Parameters and buffers are [K, *shape] copies
    of the members' (same names). Raises FuseError (a ValueError) when they
    cannot be fused."""
    if not models:
        raise FuseError("no models to fuse")
    reason = _structure_reason(list(models))
    if reason:
        raise FuseError(reason)
    dev = next(models[0].parameters()).device
    fused = _fuse(list(models), conv_strategy(conv, dev))
    fused.train(models[0].training)
    return fused


# --- the trainer ---------------------------------------------------------------------

_SGD_KEYS = ("momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
             "fused")


def can_fuse(trainers: Sequence[Trainer]) -> Optional[str]:
    """Why these solo Trainers cannot be trained as one fused program (a
    one-line reason), or None when they can."""
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

    The fused state is a copy: it is read from the members at construction
    (and by `reload()`), and written back to the members' modules and SGD
    momentum buffers at the end of every `train_epoch` (and by `sync_back()`),
    so everything downstream (checkpoints, evaluation, pruning) keeps using
    the members' own objects. Between those two points, do not change the
    members: that would be lost at the next write-back.

    `conv`: "grouped" (one conv with groups K*g), "loop" (K convs on the
    members' channel slices, the solo kernels), or "auto" (`conv_strategy`:
    grouped on CUDA and for small images on CPU, else loop). The attribute
    `channels_last` is the layout the fused batch runs in: the one the
    members' solo networks run in.

    Uses of the members: spec, prep, model, forward (must be the model),
    opt (one SGD param group), masker.params / masker.masks, names, sparse,
    loss, lr_at, autocast, channels_last and _inputs (for K=1).
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
        # The layout solo runs in: channels_last where the trainer asks for it
        # (CUDA), else NCHW (workers.data.normalize); can_fuse checked they agree.
        self.channels_last = t0.channels_last
        self.conv = conv_strategy(conv, self.device, t0.prep.info.image_size)
        self.model = fuse_models([t.model for t in self.trainers], self.conv)
        self.num_classes = t0.prep.info.num_classes
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

    # --- state --------------------------------------------------------------------
    @torch.no_grad()
    def reload(self, members: Optional[Sequence[int]] = None) -> None:
        """(Re)read members' parameters, BatchNorm buffers and SGD momentum buffers
        into their slots of the fused copy (all members, and their masks, by default)."""
        which = range(self.K) if members is None else list(members)
        dst, src = [], []
        for f, ms in self._params + self._buffers:
            for i in which:
                dst.append(f[i])
                src.append(ms[i].detach())
        torch._foreach_copy_(dst, src)
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
        dst, src = [], []
        for f, ms in self._params + self._buffers:
            for i in which:
                dst.append(ms[i].detach())
                src.append(f[i])
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

    def _apply_masks(self) -> None:
        """MaskApplier.apply for all members: weights, then momentum buffers."""
        pruning.apply_masks(self._mask_params, self._masks, self.opt)

    # --- training -------------------------------------------------------------------
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

    # --- the program run_epoch drives (workers/train.py) ------------------------
    def begin(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        for t in self.trainers:  # as the solo loop leaves them
            for g in t.opt.param_groups:
                g["lr"] = lr
            t.model.train()
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

    def end(self, active: list[int]) -> None:
        self.sync_back(active)

    def train_epoch(self, round_k: int, epoch: int, active: Optional[Sequence[int]] = None) -> list:
        """`[t.train_epoch(round_k, epoch) for t in trainers]`, fused, through the
        one epoch loop (workers/train.py `run_epoch`): a member that fails has
        its exception in its entry. Writes back to the `active` members (all by
        default) at the end. An inactive member's slot still trains (its result
        is dropped): every step keeps the group's shapes, so an active member's
        bits never depend on which others are active."""
        return run_epoch(self, round_k, epoch, None if active is None else list(active))
