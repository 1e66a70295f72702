"""The fused layers: each leaf's fused form over K members' channel-concatenated
activations (workers/fused_net.py builds a network of them).

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

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from workers.losses import TvMFHead, at_least_fp32, full_precision, tvmf_similarity
from workers.models.variants import HarmonicConv2d


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
