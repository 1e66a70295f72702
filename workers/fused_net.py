"""The fused network of K same-shape members: which networks fuse, and the
fused module built from their layers (workers/fused_layers.py); workers/fused.py
trains it.

    model = fuse_models([m_a, m_b, ...], conv="grouped")   # K solo modules -> one module

Why not torch.func.vmap: its docs ("Patching Batch Norm") leave BatchNorm's in-place
running-stat update unsupported for a batched input and unbatched buffers, and every
documented fix drops the running statistics eval mode needs. With stacked buffers
(stack_module_state + functional_call) the update goes through, exactly, but vmap
lowers each conv to a grouped conv anyway, a K=8 ResNet-18 step showed extra layout
copies and per-BatchNorm multiplies/adds (4x the 8 solo steps on CPU), and nothing in
it can be steered (memory format, conv algorithm). So the members are fused explicitly,
HFTA style (Wang et al., "Horizontally Fused Training Array", MLSys 2021): activations
are [B, K*C, H, W], member i owning channels [i*C, (i+1)*C); each leaf with parameters
has a fused form (workers/fused_layers.py); parameter-free layers (ReLU, pools, zero
padding) act per channel already; a container keeps its own forward over fused children.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

from workers.fused_layers import (FusedBatchNorm2d, FusedConv2d, FusedHarmonicConv2d, FusedLinear,
                                  FusedTvMFHead)
from workers.losses import TvMFHead
from workers.models.variants import HarmonicConv2d
from workers.models.vgg import MaxPoolIfLarge

__all__ = ["CONV_STRATEGIES", "FuseError", "conv_strategy", "fuse_models"]

CONV_STRATEGIES = ("auto", "grouped", "loop")

# Parameter-free layers that act on each channel (or only on H, W): already
# correct on channel-concatenated members.
_PER_CHANNEL = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, MaxPoolIfLarge, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d, nn.ZeroPad2d, nn.Identity)
# Layers that draw from the global RNG in training: each member would need
# its own stream, which one fused call cannot give.
_STOCHASTIC = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
# The leaves with parameters, by type: their fused form.
_FUSED = {nn.Conv2d: FusedConv2d, nn.BatchNorm2d: FusedBatchNorm2d, nn.Linear: FusedLinear, TvMFHead: FusedTvMFHead,
          HarmonicConv2d: FusedHarmonicConv2d}


class FuseError(ValueError):
    """Members that cannot be fused (one-line reason)."""


def _leaf_reason(mods: Sequence[nn.Module], where: str) -> Optional[str]:
    """Why the same-path modules of the members cannot be fused as a leaf, or None."""
    m = mods[0]
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
    if type(m) in _FUSED or type(m) is nn.Flatten:
        return _leaf_reason(mods, where)
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
    if t in _FUSED:
        return _FUSED[t](mods, strategy)
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
    """The strategy "auto" stands for (others are returned as they are). CUDA: grouped, one conv that
    fills the GPU K small convs leave idle (HFTA). CPU (bench/fused.py, ResNet-18, K = 4 and 8): on 8 px
    images a step is per-op overhead, grouped runs 1.15-1.7x solo and loop 0.7-1.2x; on 32 px oneDNN's
    grouped conv is slower (0.4-0.9x, loop 0.7-0.8x), so loop there: the solo kernels, the solo bits."""
    if conv not in CONV_STRATEGIES:
        raise ValueError(f"unknown conv strategy {conv!r}; known: {list(CONV_STRATEGIES)}")
    if conv != "auto":
        return conv
    if device.type == "cuda" or (image_size is not None and image_size <= SMALL_IMAGE):
        return "grouped"
    return "loop"


def fuse_models(models: Sequence[nn.Module], conv: str = "auto") -> nn.Module:
    """One module computing all `models` on channel-concatenated inputs, [B, K*C, H, W] -> [B, K*N], its
    parameters and buffers [K, *shape] copies of the members' (same names); FuseError if they do not fuse."""
    if not models:
        raise FuseError("no models to fuse")
    reason = _structure_reason(list(models))
    if reason:
        raise FuseError(reason)
    dev = next(models[0].parameters()).device
    fused = _fuse(list(models), conv_strategy(conv, dev))
    fused.train(models[0].training)
    return fused
