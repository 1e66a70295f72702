"""Fusion that proves itself on the device it runs on.

    fusion = Fusion(opts, sweep)                       # one per run_group: the checks' cache
    program, info = fusion.program(trainers, width)    # a FusedTrainer that passed, or None (alone)

Fused kernels add in another order than each member's own (workers/fused_layers.py):
other rounding, by how much depending on the device, its libraries, the dtype and
the network. No CI machine has every GPU, so a fused program checks itself where it
runs: one whole step through workers/train.py's `run_epoch` (SGD with momentum and
weight decay at epoch 1's rate, so a stale rate shows; masks; BatchNorm statistics;
the write-back) on probe copies of the members whose training set is their first
batch, unaugmented (no random stream is touched):

    fused     the fused program, in the members' numerics (dtype, autocast)
    fused64   the same in float64 on the first LOGIC_IMAGES images (its logic does not depend on the batch size)
    solo      each member's solo step in its numerics, on its batch as given and reversed
    ref       each member's solo step in float64 (and on fused64's images, as given and reversed)
    per member and tensor t of a kind c (updates, momentum, BatchNorm means and variances, the loss):
      e(x, t) = ||x_t - ref_t|| / (S_c sqrt(numel_t))
    numerics: e(fused, t) <= R max(e(solo, t) over both orders, E_c) + 16 u
    logic:    e(fused64, t) <= R max(e(ref reversed, t), E64_c) + 16 u64

S_c (the RMS of kind c's float64 values) measures errors against the size of
what is summed, not a tensor's own (a BatchNorm bias zero by cancellation);
E_c (the largest pooled solo error of kind c over the members) keeps one
lucky draw on a scalar from setting the bar; u is the unit roundoff, 16 u
covers tensors solo computes exactly. R = max(4, sqrt(L)), L the step's
longest sum (`reduction_length`), is derived, not tuned: a sum of L terms
rounds by about sqrt(L) u in a typical order, at most L u in the worst
(Higham), and another correct algorithm lands between, while a logic bug
(another member's data, mask, momentum or statistics, a wrong rate) is off
by the tensor's own size. In float64 a correct program is within 1e-12 of
the RMS and a bug near 1, so the logic check is decisive in every numerics
(bench/fuse_mutations.py); the numerics check catches kernels that round worse
than R x solo (in fp32 about R x 1e-6 of the RMS; under bf16, whose solo
rounding of one step is 2-300% of it, only gross breakage). A failed check is
no error: the group tries the next strategy (grouped, loop, each member alone),
says so in one line, and every round records the outcome (metrics key
`fuse_check`), cached per `check_key` in the process and in `<sweep>/fuse_checks/`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from typing import Optional, Sequence

import torch

from workers.fused import FusedTrainer, can_fuse, conv_strategy
from workers.train import Solo, Trainer, run_epoch

log = logging.getLogger("lth_sweep.fusecheck")

# Every shipped (method, architecture) whose lineages fuse (a method built from
# another lineage never does): what the equivalence tests and gpu_check cover.
FUSABLE = [("imp", "resnet18"), ("imp", "resnet50"), ("imp", "vgg16"), ("imp", "mobilenetv2"), ("imp", "vgg16_paper"),
           ("imp", "mobilenetv2_cifar"), ("full_conv", "resnet18"), ("harmonic", "resnet18"),
           ("tvmf_loss", "resnet18"), ("cosine_loss", "resnet18")]

LOGIC_IMAGES = 16  # per member, in the float64 run of the fused program
RATIO = 4.0  # the least R: two correct orders' errors differ by a factor of order one
FLOOR_ULPS = 16
RULE = (f"one whole step through run_epoch, in the members' numerics and in float64; per tensor: fused error <= "
        f"R x max(its solo error in two batch orders, the largest pooled solo error of its kind over the members) "
        f"+ {FLOOR_ULPS} ulp, R = max({RATIO:g}, sqrt(the step's longest sum)), errors vs the float64 solo step "
        f"in units of the kind's RMS")

# In this process: the same group shape on the same device is checked once.
_CACHE: dict[str, dict] = {}


def check_key(trainers: Sequence[Trainer], strategy: str) -> dict:
    """What a check's outcome depends on (the cache key, readable)."""
    t0, dev = trainers[0], trainers[0].prep.device
    shapes = [(n, list(p.shape)) for n, p in t0.model.named_parameters()]
    device = f"cuda ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else dev.type
    return {"rule": 2, "arch": t0.spec.model.arch, "variant": type(t0.model).__name__,
            "shapes": hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:12],
            "K": len(trainers), "batch": t0.spec.train.batch_size,
            "image": list(t0.prep.x_train.shape[1:]), "losses": sorted({t.spec.prune.method for t in trainers}),
            "strategy": strategy, "device": device,
            "dtype": str(t0.dtype).replace("torch.", ""), "autocast": "bfloat16" if t0.autocast else None,
            "channels_last": t0.channels_last, "torch": torch.__version__}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def probe(t: Trainer, dtype: Optional[torch.dtype] = None, reverse: bool = False,
          images: Optional[int] = None) -> Trainer:
    """A throw-away copy of member t (in `dtype` if given) whose epoch is one step on its first
    batch (or `images`, fewer), reversed with `reverse`, unaugmented: no random stream is touched."""
    bs = min(t.spec.train.batch_size, images or t.spec.train.batch_size)
    x, y = t.prep.x_train[:bs], t.prep.y_train[:bs]
    if reverse:
        x, y = x.flip(0), y.flip(0)
    return _copy(t, dtype, dataclasses.replace(t.prep, x_train=x, y_train=y, augment=lambda xb, gen: xb))


def _copy(t: Trainer, dtype: Optional[torch.dtype] = None, prep=None) -> Trainer:
    """A copy of member t: weights, masks, momentum buffers and numerics (in `dtype` if given)."""
    model = copy.deepcopy(t.model)
    if dtype is not None:
        model.to(dtype)
    c = Trainer(t.spec, prep or t.prep, model, {n: m.detach().clone() for n, m in t.masks().items()})
    c.load_momentum(t.momentum_state())
    c.autocast = t.autocast and dtype is None
    c.channels_last = t.channels_last
    return c


def state_copy(t: Trainer) -> dict[str, torch.Tensor]:
    """Member t's trainable state in float64 on the host (the check's copies take
    no device memory from the group): parameters, momentum buffers, BatchNorm statistics."""
    def f64(x):  # a copy even where x is float64 already: the step updates in place
        return x.detach().to("cpu", torch.float64, copy=True)
    out = {f"param:{n}": f64(p) for n, p in t.model.named_parameters()}
    out.update({f"momentum:{n}": f64(b) for n, b in t.momentum_state().items()})
    out.update({n: f64(b) for n, b in t.model.named_buffers()
                if b is not None and b.is_floating_point() and n.endswith(("running_mean", "running_var"))})
    return out


def _after_one_step(program) -> list[dict[str, torch.Tensor]]:
    """Per member of `program` (a FusedTrainer or a Solo of probes), after one step through `run_epoch`
    at epoch 1's rate: each parameter's update, and the momentum buffers, BatchNorm statistics and loss."""
    before = [state_copy(t) for t in program.trainers]
    rows = run_epoch(program, 0, 1)
    found = []
    for t, b, row in zip(program.trainers, before, rows):
        if isinstance(row, BaseException):
            raise row
        after = state_copy(t)
        step = {("update:" + n[6:] if n.startswith("param:") else n): v - b[n] if n.startswith("param:") else v
                for n, v in after.items()}
        step["loss"] = torch.tensor([row["loss"]], dtype=torch.float64)
        found.append(step)
    return found


def _kinds(ref: dict) -> dict[str, list[str]]:
    """The tensors' names by kind: update, momentum, running_mean, running_var, loss."""
    kinds: dict[str, list[str]] = {}
    for name in ref:
        kinds.setdefault(name.split(":")[0] if ":" in name else name.rsplit(".", 1)[-1], []).append(name)
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


def compare(fused: dict, solo, ref: dict, u: float, floor: Optional[dict[str, float]] = None,
            ratio: float = RATIO) -> dict:
    """One member's errors under the rule (module docstring): the pooled fused and solo errors, and
    the tensor closest to failing (margin > 1 fails). `solo`: one solo step or several (correct orders:
    per tensor the largest error counts); `floor`: per kind, every member's pooled solo error."""
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
            margin = e_f / (ratio * max(e_s, E_s) + FLOOR_ULPS * u)
            if margin > worst["margin"]:
                worst = {"margin": margin, "tensor": n, "fused": e_f, "solo": e_s, "solo_pooled": E_s}
    return {"fused": pooled_f, "solo": pooled_s, "worst": worst}


def reduction_length(t: Trainer) -> int:
    """The longest sum one step of member t adds: a batch's pixels (BatchNorm statistics, a
    convolution's weight gradient) or a weight's fan-in (a convolution's or a linear's output)."""
    x = t.prep.x_train
    pixels = t.spec.train.batch_size * (x[0].numel() // x.shape[1])
    fan_in = max((p[0].numel() for p in t.model.parameters() if p.dim() > 1), default=1)
    return max(pixels, fan_in)


def _judge(fused: list, steps: list, u: float, ratio: float) -> dict:
    """Every member's fused step against its (solo steps, float64 step) in `steps`, under the rule."""
    floor: dict[str, float] = {}
    for solos, ref in steps:
        for s in solos:
            for kind, e in pooled_errors(s, ref).items():
                floor[kind] = max(floor.get(kind, 0.0), e)
    worst = {"margin": -1.0}
    e_fused = e_solo = 0.0
    for i, (solos, ref) in enumerate(steps):
        c = compare(fused[i], solos, ref, u, floor, ratio)
        e_fused, e_solo = max(e_fused, c["fused"]), max(e_solo, c["solo"])
        if c["worst"]["margin"] > worst["margin"]:
            worst = {**c["worst"], "member": i}
    return {"fused_error": e_fused, "solo_error": e_solo, "worst": worst}


def self_check(trainers: Sequence[Trainer], strategy: str) -> dict:
    """The check (module docstring) of these members fused with `strategy`."""
    t0 = time.perf_counter()
    dev = trainers[0].prep.device
    u = 2.0 ** -8 if trainers[0].autocast else {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24}.get(
        trainers[0].dtype, 2.0 ** -8)  # the unit roundoff of the members' arithmetic
    ratio = max(RATIO, reduction_length(trainers[0]) ** 0.5)
    f64 = torch.float64
    n = LOGIC_IMAGES
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        fused = _after_one_step(FusedTrainer([probe(t) for t in trainers], conv=strategy))
        # The float64 program, twice the bytes per weight, runs on a few images: it
        # then needs less memory than the group's own training steps.
        fused64 = _after_one_step(FusedTrainer([probe(t, f64, images=n) for t in trainers], conv=strategy))
        steps, steps64 = [], []
        for t in trainers:
            solos = [_after_one_step(Solo(probe(t, reverse=r)))[0] for r in (False, True)]
            ref = _after_one_step(Solo(probe(t, f64)))[0]
            ref_n, ref_n_rev = (_after_one_step(Solo(probe(t, f64, r, n)))[0] for r in (False, True))
            steps.append((solos, ref))
            steps64.append(([ref_n_rev], ref_n))
        numerics = _judge(fused, steps, u, ratio)
        logic = _judge(fused64, steps64, 2.0 ** -53, ratio)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    passed = numerics["worst"]["margin"] <= 1.0 and logic["worst"]["margin"] <= 1.0
    return {"passed": passed, "strategy": strategy, **numerics, "logic": logic, "ratio": round(ratio, 2),
            "rule": RULE, "seconds": round(time.perf_counter() - t0, 3)}


class Fusion:
    """How a group's members of one round train together: the fused program
    whose self-check passed on this device, or None (each member alone)."""

    def __init__(self, opts, sweep=None):
        self.opts, self.sweep = opts, sweep
        self.refused: set[str] = set()  # can_fuse reasons already said
        self.said: set[str] = set()     # failed checks already said

    def program(self, trainers: list[Trainer], width: int) -> tuple[Optional[FusedTrainer], dict]:
        """`trainers` (this round's members) fused with pads up to `width`, or None (alone),
        and what each member's round records: {"fuse_check": outcome} where fusion was tried."""
        if width <= 1:
            return None, {}
        reason = can_fuse(trainers)
        if reason is not None:
            if reason not in self.refused:
                self.refused.add(reason)
                log.warning("%d lineages train unfused: %s", len(trainers), reason)
            return None, {}
        # A pad keeps the program's width: a copy of a member, fed its data, never read (workers/group.py).
        members = trainers + [_copy(trainers[0]) for _ in range(width - len(trainers))]
        t0 = members[0]
        first = conv_strategy(self.opts.fuse_conv, t0.prep.device, t0.prep.info.image_size)
        order = ["grouped", "loop"] if first == "grouped" else ["loop"]  # loop: the members' own kernels
        for i, strategy in enumerate(order):
            outcome = self.check(members, strategy)
            if outcome["passed"]:
                if i:
                    outcome = {**outcome, "fell_back_from": order[:i]}
                return FusedTrainer(members, conv=strategy), {"fuse_check": outcome}
            if outcome["digest"] not in self.said:  # once per group shape, not every round
                self.said.add(outcome["digest"])
                w, key = outcome["worst"], outcome["key"]
                log.warning("fusion self-check failed: %s %s K=%d on %s %s: fused error %.2e vs solo %.2e (member "
                            "%d, %s); training with %s", key["arch"], strategy, width, key["device"],
                            key["autocast"] or key["dtype"], w["fused"], w["solo"], w["member"], w["tensor"],
                            (order[i + 1:] or ["each member alone"])[0])
        return None, {"fuse_check": {**outcome, "fell_back_from": order}}

    def unchecked(self, trainers: list[Trainer], width: int) -> bool:
        """Whether `width` slots of these members would still run their check (memory.py counts it)."""
        t0, ts = trainers[0], list(trainers[:width])
        first = conv_strategy(self.opts.fuse_conv, t0.prep.device, t0.prep.info.image_size)
        digest = _digest(check_key(ts + [t0] * (width - len(ts)), first))
        return digest not in _CACHE and self._read(digest) is None

    def check(self, members: list[Trainer], strategy: str) -> dict:
        key = check_key(members, strategy)
        digest = _digest(key)
        if digest in _CACHE:
            return _CACHE[digest]
        outcome = self._read(digest)
        if outcome is None:
            outcome = {**self_check(members, strategy), "key": key, "digest": digest}
            if self.sweep is not None:
                try:
                    self.sweep.write_json(self.sweep.fuse_check_name(digest), outcome)
                except OSError as e:  # the cache is an optimisation; the outcome is in every round anyway
                    log.warning("fusion self-check not cached (%s)", e)
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
