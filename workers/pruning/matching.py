"""Small-dense baseline: the width at which a *dense* network has as many
parameters as a sparse ticket.

Comparing a ticket with a dense model of equal parameter count separates "a
sparse network is better" from "a smaller network is better" (the
small-dense control).

Counting rule, used on both sides: parameters (`model.parameters()`), not
buffers, so BatchNorm running statistics do not count (they are not learned
weights). A ticket counts its kept prunable weights plus every parameter
that is not prunable (BN affine, biases, the head): those stay dense.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .masks import Masks


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ticket_param_count(model: nn.Module, masks: Masks) -> int:
    """Kept prunable weights + all non-prunable parameters of `model`."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        if name not in params or params[name].shape != m.shape:
            raise ValueError(f"mask {name!r} does not match a parameter of the model")
    kept = sum(int(m.sum()) for m in masks.values())
    dense_rest = sum(p.numel() for n, p in params.items() if n not in masks)
    return kept + dense_rest


def _count_at(build: Callable[[float], nn.Module], width: float) -> int:
    """Parameter count of `build(width)`. Built on the meta device when it can
    be: shapes without storage or init, so a full-width ResNet-18 costs
    milliseconds rather than a kaiming init of 11M weights."""
    try:
        with torch.device("meta"):
            return param_count(build(width))
    except (RuntimeError, NotImplementedError):
        # A builder that needs real data at construction: build it for real.
        return param_count(build(width))


def _shortest_inside(a: float, b: float) -> float:
    """A value with few decimals in the middle half of [a, b]: the returned
    width lands in a spec / results table, and a width away from the stair's
    edges survives a later rounding of the float unchanged."""
    lo, hi = a + (b - a) / 4, b - (b - a) / 4
    mid = (a + b) / 2
    for digits in range(1, 17):
        x = round(mid, digits)
        if lo <= x <= hi:
            return x
    return mid


def _edge(count: Callable[[float], int], cache: dict[float, int], below,
          tol: float) -> tuple[float, float]:
    """Bisection for the step of a nondecreasing staircase where `below(count)`
    turns false. Starts from the tightest bracket the widths counted so far
    give (the first search leaves many points near the stairs the later ones
    look for), and stops at a bracket narrower than `tol`."""
    lo = max(w for w, c in cache.items() if below(c))
    hi = min(w for w, c in cache.items() if not below(c))
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if below(count(mid)):
            lo = mid
        else:
            hi = mid
    return lo, hi


def matching_width(build: Callable[[float], nn.Module], target: int,
                   lo: float = 0.01, hi: float = 1.0, tol: float = 1e-5) -> float:
    """A width multiplier in [lo, hi] whose dense model `build(width)` has a
    total parameter count as close as possible to `target`.

    Channel counts are rounded (`round(c * width)`), so count(width) is a
    nondecreasing staircase, not a continuous curve; what can be matched is
    one of its stair levels. The search:
      1. bisection for the step where count crosses `target`: the levels just
         below and at/above it are the only candidates (the staircase is
         monotone, so no other level is closer);
      2. pick the closer of the two levels (ties: the smaller model);
      3. find that stair's edges (bisection again) and return a short decimal
         from the middle of the stair (robust to later float rounding).
    `tol` must be below the narrowest stair (for ResNet-18, breakpoints
    (n + 1/2) / c with c in {64, ..., 512} are >= 1/1024 apart).
    Assumes count is nondecreasing in width, true when every channel count
    is a nondecreasing function of width (as in `workers.models.resnet`).
    Returns lo (hi) when even lo (hi) overshoots (undershoots) the target.
    """
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    cache: dict[float, int] = {}

    def count(w: float) -> int:
        if w not in cache:
            cache[w] = _count_at(build, w)
        return cache[w]

    if count(lo) >= target:
        return lo
    if count(hi) <= target:
        return hi
    # 1. The crossing: count(a) < target <= count(b), b - a < tol.
    a, b = _edge(count, cache, lambda c: c < target, tol)
    # 2. The closer level.
    level = count(a) if target - count(a) <= count(b) - target else count(b)
    # 3. That level's stair [left, right].
    left = lo if count(lo) == level else _edge(count, cache, lambda c: c < level, tol)[1]
    right = hi if count(hi) == level else _edge(count, cache, lambda c: c <= level, tol)[0]
    out = _shortest_inside(left, right)
    assert count(out) == level, (out, left, right, level)
    return out


__all__ = ["matching_width", "param_count", "ticket_param_count"]
