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


def _layout(x: torch.Tensor):
    """channels_last for a 4-D tensor laid out so (and not also contiguous), else contiguous."""
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """[K, *shape] in the members' layout: slice i has member i's strides, and for channels_last members
    the [K*O, I, h, w] view a grouped conv uses is channels_last too (the layout steers the CPU conv's
    algorithm: keeping it keeps `conv="loop"` on the solo kernels)."""
    t0 = tensors[0]
    if _layout(t0) == torch.channels_last:
        K, (O, I, h, w) = len(tensors), t0.shape
        out = torch.empty((K, O, h, w, I), dtype=t0.dtype, device=t0.device).permute(0, 1, 4, 2, 3)
    else:
        out = torch.empty((len(tensors), *t0.shape), dtype=t0.dtype, device=t0.device)
    with torch.no_grad():
        for i, t in enumerate(tensors):
            out[i].copy_(t)
    return out


def _params(fused: nn.Module, members: Sequence[nn.Module], *names: str) -> None:
    """The members' parameters `names` stacked as the fused layer's (None where theirs are None)."""
    for name in names:
        ps = [getattr(m, name) for m in members]
        fused.register_parameter(name, None if ps[0] is None else nn.Parameter(
            _stack([p.detach() for p in ps]), requires_grad=ps[0].requires_grad))


def _each(t: Optional[torch.Tensor], K: int) -> Sequence[Optional[torch.Tensor]]:
    """A stacked parameter's K member slices (K Nones for none)."""
    return [None] * K if t is None else t.unbind(0)


def _slices(x: torch.Tensor, K: int) -> list[torch.Tensor]:
    """The members' channel slices of x, each dense in x's own layout: a kernel picks its algorithm (and
    so its rounding) by its operands' strides, and the solo kernel saw a dense tensor."""
    fmt = _layout(x)
    return [xi.contiguous(memory_format=fmt) for xi in x.chunk(K, 1)]


class _CatDenseGrad(torch.autograd.Function):
    """torch.cat on dim 1 whose backward hands each member a dense gradient (plain cat's strided views
    of one big gradient make the CPU BatchNorm backward reduce in another order than solo's)."""

    @staticmethod
    def forward(ctx, *xs):
        ctx.sizes = [x.shape[1] for x in xs]
        return torch.cat(xs, 1)

    @staticmethod
    def backward(ctx, g):
        fmt = _layout(g)
        return tuple(gi.contiguous(memory_format=fmt) for gi in g.split(ctx.sizes, 1))


def _cat(outs: list[torch.Tensor]) -> torch.Tensor:
    """The members' outputs side by side on dim 1 (one member's as it is: its layout stays the solo one)."""
    return outs[0] if len(outs) == 1 else _CatDenseGrad.apply(*outs)


class _Fused(nn.Module):
    """K members' layer of one type, fused with `strategy`; `copied`: the settings read from the first."""
    copied: tuple[str, ...] = ()

    def __init__(self, members: Sequence[nn.Module], strategy: str = "grouped"):
        super().__init__()
        self.K, self.strategy = len(members), strategy
        for name in self.copied:
            setattr(self, name, getattr(members[0], name))

    def extra_repr(self) -> str:
        settings = [f"{n}={getattr(self, n)}" for n in self.copied]
        return ", ".join([f"K={self.K}", *settings, f"strategy={self.strategy}"])


class FusedConv2d(_Fused):
    """K members' Conv2d on [B, K*C_in, H, W] -> [B, K*C_out, H', W']."""
    copied = ("in_channels", "out_channels", "groups", "stride", "padding", "dilation")

    def __init__(self, members: Sequence[nn.Conv2d], strategy: str = "grouped"):
        super().__init__(members, strategy)
        _params(self, members, "weight", "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strategy == "grouped":
            b = None if self.bias is None else self.bias.flatten()
            return F.conv2d(x, self.weight.flatten(0, 1), b, self.stride, self.padding, self.dilation,
                            self.groups * self.K)
        return _cat([F.conv2d(xi, w, b, self.stride, self.padding, self.dilation, self.groups)
                     for xi, w, b in zip(_slices(x, self.K), self.weight.unbind(0), _each(self.bias, self.K))])


class FusedBatchNorm2d(_Fused):
    """K members' BatchNorm2d as one over K*C channels, each member's own statistics (the kernel updates
    the [K, C] buffers' [K*C] views in place, as each solo BatchNorm its own). "loop": each member's own
    batch_norm on its slice: the CPU kernel's vector loop depends on the channel count, so K*C channels
    (MobileNetV2's 2-4 channel blocks: 6-12) round the tail differently from K calls over C."""
    copied = ("num_features", "eps", "momentum", "affine", "track_running_stats")

    def __init__(self, members: Sequence[nn.BatchNorm2d], strategy: str = "grouped"):
        super().__init__(members, strategy)
        _params(self, members, "weight", "bias")  # None without affine
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, _stack([getattr(x, name) for x in members])
                                 if self.track_running_stats else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d.forward with momentum a float (FusedTrainer refuses None).
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        use_batch = self.training or not self.track_running_stats
        rm, rv, w, b = (None if t is None else t.view(-1)
                        for t in (self.running_mean, self.running_var, self.weight, self.bias))
        if self.strategy != "loop" or self.K == 1:
            return F.batch_norm(x, rm, rv, w, b, use_batch, self.momentum, self.eps)
        parts = [None if t is None else t.chunk(self.K) for t in (rm, rv, w, b)]
        return _cat([F.batch_norm(xi, *(None if p is None else p[i] for p in parts), use_batch, self.momentum,
                                  self.eps) for i, xi in enumerate(_slices(x, self.K))])


class FusedLinear(_Fused):
    """K members' Linear, [B, K*F] -> [B, K*N]: one batched matmul ("grouped") or each one's F.linear ("loop")."""
    copied = ("in_features", "out_features")

    def __init__(self, members: Sequence[nn.Linear], strategy: str = "grouped"):
        super().__init__(members, strategy)
        _params(self, members, "weight", "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.strategy == "loop":
            return _cat([F.linear(xi, w, b) for xi, w, b in
                         zip(_slices(x.reshape(B, -1), self.K), self.weight.unbind(0), _each(self.bias, self.K))])
        xk = x.reshape(B, self.K, self.in_features).transpose(0, 1)  # [K, B, F]
        wt = self.weight.transpose(1, 2)  # [K, F, N]
        out = torch.bmm(xk, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xk, wt)
        return out.transpose(0, 1).reshape(B, self.K * self.out_features)


class FusedTvMFHead(_Fused):
    """K members' TvMFHead (learned or fixed scale): [B, K*F] -> [B, K*N]."""
    copied = ("in_features", "out_features", "kappa", "fixed_scale")

    def __init__(self, members: Sequence[TvMFHead], strategy: str = "grouped"):
        super().__init__(members, strategy)
        _params(self, members, "weight", "scale_raw")  # scale_raw [K, 1], None for a fixed scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):  # as TvMFHead: the cosine in fp32 under autocast
            x = at_least_fp32(x)
            B = x.shape[0]
            if self.strategy == "loop":  # TvMFHead.forward, member by member
                ss = ([self.fixed_scale] * self.K if self.scale_raw is None
                      else (1.0 + F.softplus(self.scale_raw)).unbind(0))
                return _cat([s * tvmf_similarity(F.linear(F.normalize(xi, dim=1),
                                                          F.normalize(at_least_fp32(w), dim=1)).clamp(-1.0, 1.0),
                                                 self.kappa)
                             for xi, w, s in zip(_slices(x.reshape(B, -1), self.K), self.weight.unbind(0), ss)])
            xk = F.normalize(x.reshape(B, self.K, self.in_features), dim=2).transpose(0, 1)  # [K, B, F]
            wk = F.normalize(at_least_fp32(self.weight), dim=2)  # [K, N, F]
            sim = tvmf_similarity(torch.bmm(xk, wk.transpose(1, 2)).clamp(-1.0, 1.0), self.kappa)  # [K, B, N]
            if self.scale_raw is None:
                out = self.fixed_scale * sim
            else:
                # Each member's scale times its own [B, N] similarities, as solo: the
                # scale's gradient is then the solo reduction over B*N terms. One
                # broadcast multiply over [K, B, N] reduces it in another order, whose
                # rounding was 3-8x solo's (the fusion self-check's rule is 4x).
                out = torch.stack([(1.0 + F.softplus(r)) * m for r, m in zip(self.scale_raw, sim.unbind(0))])
            return out.transpose(0, 1).reshape(B, self.K * self.out_features)


class FusedHarmonicConv2d(_Fused):
    """K members' HarmonicConv2d: the fixed DCT stage (the same basis in every member) as one depthwise
    conv over K*C_in channels, then the members' 1x1 mixes as a FusedConv2d."""
    copied = ("in_channels", "out_channels", "stride", "padding")

    def __init__(self, members: Sequence[HarmonicConv2d], strategy: str = "grouped"):
        super().__init__(members, strategy)
        self.register_buffer("basis", members[0].basis.detach().clone())  # shared, never trained
        self.mix = FusedConv2d([x.mix for x in members], strategy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loop = self.strategy == "loop"  # HarmonicConv2d.forward's DCT stage per member
        n = self.in_channels if loop else self.K * self.in_channels
        w = self.basis.to(x.dtype).repeat(n, 1, 1, 1)
        if loop:
            return self.mix(_cat([F.conv2d(xi, w, None, self.stride, self.padding, groups=n)
                                  for xi in _slices(x, self.K)]))
        return self.mix(F.conv2d(x, w, None, self.stride, self.padding, groups=n))
