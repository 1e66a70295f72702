"""Fusion that proves itself on the device it runs on.

    fusion = Fusion(opts, sweep)                       # one per run_group: the checks' cache
    program, info = fusion.program(trainers, width)    # a FusedTrainer that passed, or None (alone)

Fused kernels (a grouped conv over K members, BatchNorm over K*C channels,
batched matmul heads) add in another order than each member's own kernels.
In exact arithmetic they compute the same step; in floating point they
differ by rounding, and how much depends on the device, its libraries, the
dtype and the network (an ill-conditioned one compounds it). No CI machine
has every GPU, so before a fused program trains it checks itself where it
runs, in the arithmetic the trials train with:

    for each member i, on one batch of its own (the first `batch_size`
    training images, unaugmented: no random stream is touched):
      solo  = the member's solo step   (its own module, the trial's dtype/autocast)
      solo' = the same on the batch in reverse order (the same sums, added in another order)
      fused = the fused step's slot i  (the same, through the fused program)
      ref   = the member's solo step in float64
    for every tensor t of a kind c (gradients, BatchNorm running means,
    running variances, logits):
      e_fused(t) = ||fused_t - ref_t|| / (S_c sqrt(numel_t))
      e_solo(t)  = max over solo, solo' of ||solo_t - ref_t|| / (S_c sqrt(numel_t))
      E_solo(c)  = the largest pooled error over kind c of any member's solo or
                   solo' step, in the same units
    pass  iff  e_fused(t) <= RATIO * max(e_solo(t), E_solo(c)) + FLOOR_ULPS * u   for every t

S_c is the RMS of the float64 values of kind c over the whole network, so
errors are measured against the size of what is being summed, not against
a tensor's own size: a tensor that is zero by cancellation (a BatchNorm
bias whose shift the next BatchNorm removes, a running mean of standardised
inputs) has solo and fused errors that are pure rounding noise, and its own
norm would blow both up to meaningless ratios (1e9 measured in MobileNetV2).
Pooling the solo error over a kind keeps one lucky draw (a scalar such as
t-vMF's learned scale, whose solo rounding happens to be 1e-7) from failing
a fused error that is no larger than the network's usual one.

u is the unit roundoff of the arithmetic (2^-24 in float32, 2^-8 under bf16
autocast). The rule says: fusion may not add more error than correct orders
of the same sums already carry from their own rounding. Reordering a sum
changes its rounding error by a factor of order one (both orders' errors are
draws of the same size), so the solo error is measured in two orders (the
batch as given and reversed: every batch reduction, the gradients' and the
BatchNorm statistics', adds in another order) and over every member, and
RATIO = 4 accepts the spread left. One draw is not enough: on a 2-core AMD
EPYC (AVX2) a correct grouped MobileNetV2 failed a rule that took the solo
step in one order of one member (a depthwise BatchNorm bias gradient, fused
error 2.8e-5 against a pooled solo error of 5.6e-6: margin 1.13), while a real fusion bug (another
member's data, mask, statistics or gradient) is off by the size of the
tensor itself: e_fused ~ 1, orders of magnitude above any solo rounding.
The floor covers tensors that solo computes exactly (e_solo = 0). A check
that fails is not an error: the group tries the next strategy (grouped, then
loop, then each member alone), says so in one line, and every committed
round records the outcome (metrics key `fuse_check`) and its numerics.

Checks are cached per (architecture, shapes, K, strategy, device, dtype,
autocast, torch version): in this process and, for the sweep, as one JSON
file per key under `<sweep>/fuse_checks/` (workers/store.py), which the
run record and `lth-sweep status` list.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from typing import Optional, Sequence

import torch

from workers.fused import FusedTrainer, can_fuse, conv_strategy
from workers.train import Solo, Trainer

log = logging.getLogger("lth_sweep.fusecheck")

# Every shipped (method, architecture) whose lineages fuse (a method built from
# another lineage never does): what the equivalence tests and gpu_check cover.
FUSABLE = [("imp", "resnet18"), ("imp", "resnet50"), ("imp", "vgg16"), ("imp", "mobilenetv2"),
           ("imp", "vgg16_paper"), ("imp", "mobilenetv2_cifar"), ("full_conv", "resnet18"), ("harmonic", "resnet18"), ("tvmf_loss", "resnet18"),
           ("cosine_loss", "resnet18")]

RATIO = 4.0
FLOOR_ULPS = 16
RULE = (f"per tensor: fused error <= {RATIO:g} x max(its solo error in two batch orders, the largest pooled solo "
        f"error of its kind over the members) + {FLOOR_ULPS} ulp, errors vs the float64 step in units of the "
        f"kind's RMS")

# In this process: the same group shape on the same device is checked once.
_CACHE: dict[str, dict] = {}


def fallbacks(first: str) -> list[str]:
    """The strategies to try, in order, starting at `first`: grouped, then loop
    (the members' own kernels); after them, each member trains alone."""
    return ["grouped", "loop"] if first == "grouped" else ["loop"]


def unit_roundoff(t: Trainer) -> float:
    if t.autocast:
        return 2.0 ** -8
    return {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24}.get(t.dtype, 2.0 ** -8)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def check_key(trainers: Sequence[Trainer], strategy: str) -> dict:
    """What a check's outcome depends on (the cache key, readable)."""
    t0 = trainers[0]
    shapes = [(n, list(p.shape)) for n, p in t0.model.named_parameters()]
    return {"arch": t0.spec.model.arch, "variant": type(t0.model).__name__,
            "shapes": hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:12],
            "K": len(trainers), "batch": t0.spec.train.batch_size,
            "image": list(t0.prep.x_train.shape[1:]), "losses": sorted({t.spec.prune.method for t in trainers}),
            "strategy": strategy, "device": device_label(t0.prep.device),
            "dtype": str(t0.dtype).replace("torch.", ""), "autocast": "bfloat16" if t0.autocast else None,
            "channels_last": t0.channels_last, "torch": torch.__version__}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _clone(t: Trainer, dtype: Optional[torch.dtype] = None) -> Trainer:
    """A throw-away copy of member t (its weights, masks and numerics); in `dtype` if given."""
    model = copy.deepcopy(t.model)
    if dtype is not None:
        model.to(dtype)
    c = Trainer(t.spec, t.prep, model, {n: m.detach().clone() for n, m in t.masks().items()})
    c.autocast = t.autocast and dtype is None
    c.channels_last = t.channels_last
    return c


def _after_one_step(program, batches, reverse: bool = False) -> list[dict[str, torch.Tensor]]:
    """Per member: the gradients, BatchNorm running statistics and logits of one
    forward/backward of `program` on `batches` (no optimizer step); with
    `reverse`, on each batch in reverse order (logits put back in batch order)."""
    if reverse:
        batches = [(x.flip(0), y.flip(0)) for x, y in batches]
    ts = program.trainers
    K, N, dev = len(ts), ts[0].prep.info.num_classes, program.device
    program.begin(0.0)
    ybs = [y.to(dev) for _, y in batches]
    B = ybs[0].shape[0]
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=program.autocast):
        out = program.forward([x for x, _ in batches]).view(B, K, N)
        losses = [t.loss(out[:, i].contiguous(), ybs[i], N) for i, t in enumerate(ts)]
    torch.stack(losses).sum().backward()
    model = program.model if isinstance(program, FusedTrainer) else ts[0].model
    sliced = isinstance(program, FusedTrainer)
    found = [{"logits": (out[:, i].flip(0) if reverse else out[:, i]).detach().double()} for i in range(K)]
    for name, p in model.named_parameters():
        if p.grad is not None:
            for i in range(K):
                found[i][f"grad:{name}"] = (p.grad[i] if sliced else p.grad).detach().double()
    for name, b in model.named_buffers():
        if b is not None and b.is_floating_point() and name.endswith(("running_mean", "running_var")):
            for i in range(K):
                found[i][name] = (b[i] if sliced else b).detach().double()
    return found


def _kind(name: str) -> str:
    return name.split(":")[0] if ":" in name else name.rsplit(".", 1)[-1]


def _kinds(ref: dict) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for name in ref:
        kinds.setdefault(_kind(name), []).append(name)
    return kinds


def _scale(ref: dict, names: list[str]) -> tuple[int, float]:
    """(elements, RMS) of a kind's float64 values: the unit errors are measured in."""
    numel = max(1, sum(ref[n].numel() for n in names))
    return numel, max((sum(float(ref[n].square().sum()) for n in names) / numel) ** 0.5, 1e-300)


def _norm(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b))


def pooled_errors(step: dict, ref: dict) -> dict[str, float]:
    """Per kind: a step's pooled error against the float64 step, in units of the kind's RMS."""
    out = {}
    for kind, names in _kinds(ref).items():
        numel, scale = _scale(ref, names)
        out[kind] = (sum(_norm(step[n], ref[n]) ** 2 for n in names) / numel) ** 0.5 / scale
    return out


def compare(fused: dict, solo, ref: dict, u: float, floor: Optional[dict[str, float]] = None) -> dict:
    """One member's errors under the rule (module docstring): the pooled
    fused and solo errors, and the tensor closest to failing (margin > 1 fails).
    `solo`: one solo step or several (correct orders; per tensor the largest
    error counts); `floor`: per kind, the pooled solo error of every member
    (default: this member's own)."""
    solos = solo if isinstance(solo, (list, tuple)) else [solo]
    own = [pooled_errors(s, ref) for s in solos]
    worst = {"margin": -1.0}
    pooled_f = pooled_s = 0.0
    for kind, names in _kinds(ref).items():
        numel, scale = _scale(ref, names)
        a_f = {n: _norm(fused[n], ref[n]) for n in names}
        a_s = {n: max(_norm(s[n], ref[n]) for s in solos) for n in names}
        E_s = max([e[kind] for e in own] + ([floor[kind]] if floor else []))
        E_f = (sum(v * v for v in a_f.values()) / numel) ** 0.5 / scale
        pooled_f, pooled_s = max(pooled_f, E_f), max(pooled_s, E_s)
        for n in names:
            unit = scale * ref[n].numel() ** 0.5
            e_f, e_s = a_f[n] / unit, a_s[n] / unit
            margin = e_f / (RATIO * max(e_s, E_s) + FLOOR_ULPS * u)
            if margin > worst["margin"]:
                worst = {"margin": margin, "tensor": n, "fused": e_f, "solo": e_s, "solo_pooled": E_s}
    return {"fused": pooled_f, "solo": pooled_s, "worst": worst}


def self_check(trainers: Sequence[Trainer], strategy: str) -> dict:
    """Run the check (module docstring) for these members fused with `strategy`."""
    t0 = time.perf_counter()
    dev = trainers[0].prep.device
    u = unit_roundoff(trainers[0])
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        bs = trainers[0].spec.train.batch_size
        batches = [(t.prep.x_train[:bs], t.prep.y_train[:bs]) for t in trainers]
        fused = _after_one_step(FusedTrainer([_clone(t) for t in trainers], conv=strategy), batches)
        steps = []
        for i, t in enumerate(trainers):
            solos = [_after_one_step(Solo(_clone(t)), [batches[i]], reverse=r)[0] for r in (False, True)]
            ref = _after_one_step(Solo(_clone(t, torch.float64)), [batches[i]])[0]
            steps.append((solos, ref))
        # The rounding that correct orders carry, pooled per kind over every member.
        floor: dict[str, float] = {}
        for solos, ref in steps:
            for s in solos:
                for kind, e in pooled_errors(s, ref).items():
                    floor[kind] = max(floor.get(kind, 0.0), e)
        worst = {"margin": -1.0}
        e_fused = e_solo = 0.0
        for i, (solos, ref) in enumerate(steps):
            c = compare(fused[i], solos, ref, u, floor)
            e_fused, e_solo = max(e_fused, c["fused"]), max(e_solo, c["solo"])
            if c["worst"]["margin"] > worst["margin"]:
                worst = {**c["worst"], "member": i}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"passed": worst["margin"] <= 1.0, "strategy": strategy, "fused_error": e_fused,
            "solo_error": e_solo, "worst": worst, "rule": RULE, "seconds": round(time.perf_counter() - t0, 3)}


class Fusion:
    """How a group's members of one round train together: the fused program
    whose self-check passed on this device, or None (each member alone)."""

    def __init__(self, opts, sweep=None):
        self.opts, self.sweep = opts, sweep
        self.refused: set[str] = set()  # can_fuse reasons already said
        self.said: set[str] = set()     # failed checks already said

    def program(self, trainers: list[Trainer], width: int) -> tuple[Optional[FusedTrainer], dict]:
        """`trainers` (this round's members) fused with pads up to `width`, or
        (None, info) when they train alone. `info` is what each member's
        round records: {"fuse_check": outcome} (absent when no fusion was tried)."""
        if width <= 1:
            return None, {}
        reason = can_fuse(trainers)
        if reason is not None:
            if reason not in self.refused:
                self.refused.add(reason)
                log.warning("%d lineages train unfused: %s", len(trainers), reason)
            return None, {}
        members = trainers + [pad_like(trainers[0]) for _ in range(width - len(trainers))]
        t0 = members[0]
        first = conv_strategy(self.opts.fuse_conv, t0.prep.device, t0.prep.info.image_size)
        tried = []
        for strategy in fallbacks(first):
            outcome = self.check(members, strategy)
            tried.append(strategy)
            if outcome["passed"]:
                if len(tried) > 1:
                    outcome = {**outcome, "fell_back_from": tried[:-1]}
                return FusedTrainer(members, conv=strategy), {"fuse_check": outcome}
            if outcome["digest"] in self.said:
                continue
            self.said.add(outcome["digest"])  # once per group shape, not every round
            w = outcome["worst"]
            nxt = fallbacks(first)[len(tried)] if len(tried) < len(fallbacks(first)) else "each member alone"
            log.warning("fusion self-check failed: %s %s K=%d on %s %s: %s error %.2e vs solo %.2e (member %d, "
                        "%s); training with %s", outcome["key"]["arch"], strategy, width, outcome["key"]["device"],
                        outcome["key"]["autocast"] or outcome["key"]["dtype"], "fused", w["fused"], w["solo"],
                        w["member"], w["tensor"], nxt)
        return None, {"fuse_check": {**outcome, "fell_back_from": tried}}

    def check(self, members: list[Trainer], strategy: str) -> dict:
        key = check_key(members, strategy)
        digest = _digest(key)
        if digest in _CACHE:
            return _CACHE[digest]
        outcome = self._read(digest)
        if outcome is None:
            outcome = {**self_check(members, strategy), "key": key, "digest": digest}
            self._write(digest, outcome)
            log.info("fusion self-check %s: %s %s K=%d on %s: fused error %.2e, solo %.2e",
                     "passed" if outcome["passed"] else "FAILED", key["arch"], strategy, key["K"], key["device"],
                     outcome["fused_error"], outcome["solo_error"])
        _CACHE[digest] = outcome
        return outcome

    def _read(self, digest: str) -> Optional[dict]:
        if self.sweep is None:
            return None
        try:
            return self.sweep.read_json(self.sweep.fuse_check_name(digest))
        except (OSError, ValueError):
            return None

    def _write(self, digest: str, outcome: dict) -> None:
        if self.sweep is None:
            return
        try:
            self.sweep.write_json(self.sweep.fuse_check_name(digest), outcome)
        except OSError as e:  # the cache is an optimisation; the outcome is in every round anyway
            log.warning("fusion self-check not cached (%s)", e)


def pad_like(t: Trainer) -> Trainer:
    """A slot that only keeps a fused program's width: a copy of member t,
    fed t's data; its results are never read (see workers/group.py)."""
    return _clone(t)
