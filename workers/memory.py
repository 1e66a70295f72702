"""How many members of a group fit on their device, the self-check's copies counted.

    step, step64, state64 = steps(t, probe, LOGIC_IMAGES, state_copy)   # measured once per shape
    fit = widest(members, width, available(device), step, step64, state64, unchecked)   # width, or fewer

A fused program of K slots (n of them members, the rest pads) needs, beyond
the members' own state already on the device, what is alive at its peak:

    need(K) = margin * (max(2K step, 2K step64) + (K - n) step) [+ (7K + 2) state64 on the host]

The check (K probes and the fused program: 2K steps of one member; its
float64 logic program the same in float64) and training (K steps) do not
overlap, and the pads live through both. On a CPU the device is the host, so
the check's float64 copies of the members' state (fusecheck.state_copy: 7
per slot kept until the judgement, 2 more in flight) count as `state64`; on
CUDA they are host memory (ResNet-18 at K=8: about 10 GB) and not planned.
`step` is measured, not modelled: the peak bytes one solo step of a probe
adds (state copy, gradients, activations, the kernels' scratch), by the
CUDA allocator's peak counter or, elsewhere, a dispatch-mode meter (`Meter`);
`margin` (1.25) covers a fused kernel's larger scratch (a grouped conv's
workspace). tests/workers/test_memory.py shows the estimate above the peak
it measures. Running out anyway still splits the group (workers/group.py).
"""
from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from workers.train import Solo, run_epoch

MARGIN = 1.25

_STEPS: dict[tuple, tuple[int, int, int]] = {}


class Meter(TorchDispatchMode):
    """The bytes of tensor storage made while it is active that are alive, and their peak. With `cap`,
    an allocation past it raises torch.OutOfMemoryError, as a device would (tests' memory cap on CPU)."""

    def __init__(self, cap: Optional[int] = None):
        super().__init__()
        self.cap, self.live, self.peak = cap, 0, 0
        self._sizes: dict[int, int] = {}

    def _track(self, t: torch.Tensor) -> None:
        s = t.untyped_storage()
        key, n = s.data_ptr(), s.nbytes()
        if n == 0 or key in self._sizes:
            return
        if self.cap is not None and self.live + n > self.cap:
            del t, s  # this op's output is dropped with the error
            raise torch.OutOfMemoryError(f"out of memory: {n} bytes more than the cap of {self.cap}")
        self._sizes[key] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(s, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                self._track(t)
        return out


def available(device: torch.device) -> Optional[int]:
    """Bytes this process can still allocate on `device`: on CUDA what is free plus what the caching
    allocator holds unused, within Ray's per-process fraction; None elsewhere (no cap to plan to)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(device)
    return int(min(free + reserved - allocated, fraction * total - allocated))


def _peak(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes fn allocates beyond what was alive when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with Meter() as m:
        fn()
    return m.peak


def steps(t, probe: Callable, logic_images: int, state_copy: Callable) -> tuple[int, int, int]:
    """(step, step64, state64) of member t (module docstring), measured once per shape and numerics:
    one step of fusecheck's `probe(t)` and of its float64 probe on `logic_images` images; state64 the
    bytes of `state_copy(t)` (on a CPU device only)."""
    dev = t.prep.device
    key = (t.spec.model, t.spec.data.dataset, t.spec.train, tuple(t.prep.x_train.shape[1:]), str(dev),
           t.autocast, t.channels_last, str(t.dtype))
    if key not in _STEPS:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            one = _peak(lambda: run_epoch(Solo(probe(t)), 0, 1), dev)
            f64 = _peak(lambda: run_epoch(Solo(probe(t, torch.float64, images=logic_images)), 0, 1), dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        state64 = sum(x.nbytes for x in state_copy(t).values()) if dev.type == "cpu" else 0
        _STEPS[key] = (one, f64, state64)
    return _STEPS[key]


def need(members: int, width: int, step: int, step64: int, state64: int = 0, check: bool = True) -> int:
    """Bytes `width` slots for `members` members need (module docstring); without `check`, training only."""
    peak = max(2 * width * step, 2 * width * step64) + (7 * width + 2) * state64 if check else width * step
    return int(MARGIN * (peak + max(0, width - members) * step))


def widest(members: int, width: int, free: Optional[int], step: int, step64: int, state64: int,
           unchecked: Callable[[int], bool]) -> int:
    """The widest program (1 to `width` slots) whose `need` fits in `free` bytes, the check counted where
    `unchecked(k)` (its outcome for k slots is not known yet); `width` when free is None."""
    if free is None or width <= 1:
        return width
    k = width
    while k > 1 and need(min(members, k), k, step, step64, state64, unchecked(k)) > free:
        k -= 1
    return k
