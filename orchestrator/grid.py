"""Grid expansion: a validated experiment -> frozen trial specs.

The trial count is the product of the axis lengths. Which yaml key sets which
spec field is the spec's own metadata (workers/spec.py `spec_field`): the
axes (datasets, fractions / images_per_class, augmentations, ...) are
multiplied out in the order of the spec's fields, the sections (train, imp,
model, eval, runtime, analysis) set the rest, so `plan` lists trials the way
the spec reads.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from dataclasses import dataclass

from workers.group import fuse_key
from workers.spec import (DataSpec, EvalSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec, field_value,
                          spec_fields)

_PARTS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec, "prune": PruneSpec, "eval": EvalSpec}
# fraction and images_per_class are one axis: the size of the training subset, given either way.
_SIZE = ("fraction", "images_per_class")


@dataclass(frozen=True)
class Trial:
    spec: TrialSpec
    resources: dict  # {"cpu": float, "gpu": float}
    options: RunOptions

    @property
    def trial_id(self) -> str:
        return self.spec.trial_id

    def row(self) -> dict:
        """The trial as `plan` lists it: its id, its value on every grid axis, its resources."""
        axes = {f.name: field_value(self.spec, part, f.name) for part, f in _axis_fields()}
        return {"trial_id": self.trial_id, **axes, "resources": dict(self.resources)}


@functools.lru_cache(maxsize=None)
def _axis_fields() -> tuple:
    return tuple((part, f) for part, f in spec_fields() if f.metadata.get("axis"))


def _axes(exp: dict) -> list[tuple[str, list]]:
    """(field, values) per grid axis in spec order. The size axis is one:
    ("size", [(field, value), ...]); an axis the experiment leaves out takes its
    scalar (arch) or its field's default."""
    axis_of = {f.name: f.metadata["axis"] for _, f in spec_fields() if f.metadata.get("axis")}
    out = []
    for part, f in spec_fields():
        if f.name not in axis_of:
            continue
        if f.name in _SIZE:
            if f.name == _SIZE[0]:
                out.append(("size", [(n, v) for n in _SIZE for v in exp.get(axis_of[n], [])]))
            continue
        scalar = f.metadata.get("scalar")
        values = exp.get(axis_of[f.name])
        if isinstance(values, dict):  # adaptive seeds: every seed a cell may get (orchestrator/adaptive.py)
            values = list(range(values["adaptive"]["max"]))
        out.append((f.name, values or ([exp[scalar]] if scalar in exp else [f.default])))
    return out


def expand(exp: dict) -> list[Trial]:
    """All trials of one validated experiment (see orchestrator.config); with
    adaptive seeds, every trial the experiment may run (seeds 0 .. max - 1 of
    every cell; `first_batch` and orchestrator/adaptive.py pick from them)."""
    fixed: dict[str, dict] = {part: {} for part in _PARTS}
    options: dict = {}
    for part, f in spec_fields():
        section, key = f.metadata.get("yaml") or (None, None)
        if section and key in exp.get(section, {}):
            fixed[part][key] = exp[section][key]
    for f in dataclasses.fields(RunOptions):
        m = f.metadata
        if m.get("yaml") and m["yaml"][1] in exp.get(m["yaml"][0], {}):
            value = exp[m["yaml"][0]][m["yaml"][1]]
            options[f.name] = tuple(value) if isinstance(value, list) else value
        elif m.get("scalar") and exp.get(m["scalar"]) is not None:
            options[f.name] = exp[m["scalar"]]
        elif m.get("section") and exp.get(m["section"]):
            options[f.name] = exp[m["section"]]  # a whole yaml section (analysis: one key per evaluation)
    opts = RunOptions(**options)
    base = {"cpu": float(exp["resources"].get("cpu", 1)), "gpu": float(exp["resources"].get("gpu", 0))}
    by_fraction = exp["resources"].get("by_fraction", {})
    where = {f.name: part for part, f in spec_fields()}

    axes = _axes(exp)
    trials = []
    parts: dict = {}
    import gc
    paused = gc.isenabled()
    gc.disable()  # 10^4 trials allocate no cycles; the collector's passes over them were a third of the time
    try:
        for combo in itertools.product(*[values for _, values in axes]):
            trials.append(_trial(combo, axes, fixed, base, by_fraction, where, parts, opts))
    finally:
        if paused:
            gc.enable()
    return trials


def _trial(combo, axes, fixed, base, by_fraction, where, parts, opts) -> Trial:
    """The trial at one point of the grid (`combo`: a value per axis)."""
    kw = {part: dict(v) for part, v in fixed.items()}
    seed = 0
    resources = dict(base)
    for (name, _), value in zip(axes, combo):
        if name == "size":
            name, value = value
            over = by_fraction.get(value, {}) if name == "fraction" else {}
            resources = {k: float(over.get(k, v)) for k, v in base.items()}
        if where[name]:
            kw[where[name]][name] = value
        else:
            seed = value
    spec = TrialSpec(**{part: _interned(parts, cls, kw[part]) for part, cls in _PARTS.items()}, seed=seed)
    return Trial(spec, resources, opts)


def _interned(made: dict, cls, kw: dict):
    """One instance per distinct sub-spec: the trials of a grid share most of
    theirs, and each caches its canonical form (workers/spec.py)."""
    try:
        # In insertion order: a grid builds every trial's kw in one order (another
        # order could only make a second, equal instance). 1, 1.0 and True stay apart.
        key = (cls, tuple((k, type(v), v) for k, v in kw.items()))
        hash(key)
    except TypeError:  # a list value (an analysis section): its text
        key = (cls, repr(sorted(kw.items())))
    got = made.get(key)
    if got is None:
        got = made[key] = cls(**kw)
    return got


@dataclass(frozen=True)
class Unit:
    """What one Tune trial runs: one lineage, or several fused (workers/group.py)."""
    trials: tuple

    @property
    def unit_id(self) -> str:
        if len(self.trials) == 1:
            return self.trials[0].trial_id
        digest = hashlib.sha256(",".join(sorted(t.trial_id for t in self.trials)).encode()).hexdigest()
        return f"fused-{digest[:12]}"

    @property
    def resources(self) -> dict:
        """A fused group is one process on one device: the largest CPU ask, and
        the members' GPU shares summed up to one GPU."""
        gpu = sum(t.resources["gpu"] for t in self.trials)
        return {"cpu": max(t.resources["cpu"] for t in self.trials), "gpu": min(1.0, gpu) if gpu else 0.0}


def fuse_size(trial: Trial) -> int:
    """`runtime.fuse`, or by device: 8 lineages per GPU program, none fused on CPU."""
    if trial.options.fuse is not None:
        return trial.options.fuse
    return 8 if trial.resources["gpu"] > 0 else 1


def units(trials: list[Trial], gpus: float = 0) -> list[Unit]:
    """The trials as Tune trials: same-shape lineages (workers/group.py
    `fuse_key`, same options and resources) in groups of at most `fuse_size`,
    members in trial-id order; every other trial alone. In plan order of each
    unit's first trial.

    A fused group is one program on one device, so a cluster of `gpus` GPUs
    is kept busy only by at least as many units: while the experiment's
    GPU units are fewer than its GPUs, the bucket whose groups are largest
    is split once more (sizes within a bucket differ by at most one), so
    every GPU gets work before any group grows. The groups depend on the
    experiment and the GPU count alone: the same command on the same
    cluster size always makes the same groups; a resume on another size
    regroups the lineages still training (committed rounds stay as they
    are; each round records whom it was trained with, `fused_with`)."""
    buckets: dict = {}
    keys: dict = {}  # the trials share sub-specs (expand), so few distinct keys
    for t in trials:
        size = fuse_size(t)
        key = None
        if size > 1:
            s = t.spec
            shape = (id(s.data), id(s.model), id(s.train), id(s.prune))
            key = keys[shape] if shape in keys else keys.setdefault(shape, fuse_key(s))
        if key is None:
            buckets[("solo", t.trial_id)] = [t]
        else:
            buckets.setdefault((key, size, t.options, tuple(sorted(t.resources.items()))), []).append(t)
    members = [sorted(m, key=lambda t: t.trial_id) for m in buckets.values()]
    limit = [fuse_size(m[0]) if len(m) > 1 else 1 for m in members]
    count = [-(-len(m) // k) for m, k in zip(members, limit)]
    on_gpu = [i for i, m in enumerate(members) if m[0].resources["gpu"] > 0]
    busy = sum(count[i] for i in on_gpu)
    while busy < int(gpus):
        grow = [i for i in on_gpu if count[i] < len(members[i])]
        if not grow:
            break
        i = max(grow, key=lambda i: (-(-len(members[i]) // count[i]), -i))  # the largest groups, first bucket
        count[i] += 1
        busy += 1
    out = []
    for m, k, g in zip(members, limit, count):
        out += [Unit(tuple(x)) for x in _split(m, k, g)]
    order = {t.trial_id: i for i, t in enumerate(trials)}
    return sorted(out, key=lambda u: min(order[t.trial_id] for t in u.trials))


def _split(members: list, k: int, groups: int) -> list[list]:
    """`members` in chunks of k when that makes `groups` groups (as always),
    else in `groups` groups whose sizes differ by at most one."""
    n = len(members)
    if groups == -(-n // k):
        return [members[i:i + k] for i in range(0, n, k)]
    size, extra = divmod(n, groups)
    out, i = [], 0
    for g in range(groups):
        step = size + (1 if g < extra else 0)
        out.append(members[i:i + step])
        i += step
    return out


def cost_estimate(trials: list[Trial]) -> dict:
    """`plan`'s totals: trials, rounds, resources asked, and orchestrator/costs.py's estimate."""
    from orchestrator.costs import estimate
    est = estimate(trials)
    return {"trials": len(trials), "rounds": sum(t.spec.num_rounds for t in trials),
            "gpus": sum(t.resources["gpu"] for t in trials), "cpus": sum(t.resources["cpu"] for t in trials),
            **est}


def first_batch(exp: dict, trials: list[Trial]) -> list[Trial]:
    """What a `run` starts with: every trial, or with adaptive seeds the first
    `start` seeds of every cell."""
    seeds = exp.get("seeds")
    if not isinstance(seeds, dict):
        return trials
    return [t for t in trials if t.spec.seed < seeds["adaptive"]["start"]]
