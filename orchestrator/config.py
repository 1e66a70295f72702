"""experiments.yaml: loading and validation.

Every problem becomes one `ConfigError` line that names the file, the key
path and what is allowed, e.g.

    experiments.yaml: experiments.fig2.fractions[1]: 2.0 is outside (0, 1]

Validation runs before anything starts or is written.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import yaml

from orchestrator import adaptive
from orchestrator.checkers import by_fraction, checker, choice, names, number_in, registry_keys
from orchestrator.formatting import number

from workers import data
from workers.evaluations import EVALUATIONS
from workers.methods import METHODS
from workers.models import ARCHS
from workers.migrate import MOVED_KEYS
from workers.spec import PruneSpec, Rule, RunOptions, TrainSpec, spec_fields


class ConfigError(Exception):
    """Bad input in experiments.yaml: a one-line, user-facing message."""


# --- the schema, from the spec's fields ------------------------------------------

_FIELDS = [f for _, f in spec_fields()] + [f for f in dataclasses.fields(RunOptions) if f.metadata]
AXES: dict[str, Any] = {f.metadata["axis"]: checker(f.metadata["rule"]) for f in _FIELDS if f.metadata.get("axis")}
SECTIONS: dict[str, dict[str, Any]] = {"resources": {"gpu": number_in(0), "cpu": number_in(0, lo_open=True),
                                                     "by_fraction": by_fraction}}
for _f in _FIELDS:
    if _f.metadata.get("yaml"):
        _section, _key = _f.metadata["yaml"]
        SECTIONS.setdefault(_section, {})[_key] = checker(_f.metadata["rule"])
# analysis.<key>: each registered evaluation declares its key and what it accepts (workers/evaluations/base.py).
SECTIONS["analysis"] = {e.option: checker(e.rule) for e in EVALUATIONS.values()}
SCALARS: dict[str, Any] = {f.metadata["scalar"]: checker(f.metadata["rule"]) for f in _FIELDS
                           if f.metadata.get("scalar")}
SCALARS["description"] = lambda v: None if isinstance(v, str) else f"{v!r} is not a string"
# Experiment trackers that follow every run of the experiment (orchestrator/trackers.py).
SCALARS["trackers"] = names(choice(lambda: registry_keys("orchestrator.trackers:TRACKERS")))
# What the experiments.yaml reference (orchestrator/schema_doc.py) says of the keys
# defined here rather than by a spec field or an evaluation: (section or "", key) ->
# (what a value may be: a Rule or words, one sentence). A key without one fails tests/test_docs.py.
KEY_HELP: dict[tuple[str, str], tuple[Any, str]] = {
    ("resources", "gpu"): (Rule(float, lo=0), "GPUs each trial asks Ray for; a fraction packs several trials "
                                              "on one GPU."),
    ("resources", "cpu"): (Rule(float, lo=0, lo_open=True), "CPUs each trial asks Ray for."),
    ("resources", "by_fraction"): ("a mapping of fraction -> {gpu, cpu}", "Per training fraction, the gpu and "
                                   "cpu of that fraction's trials instead, e.g. {0.01: {gpu: 0.25, cpu: 1}}."),
    ("", "description"): ("text", "What the experiment is for, in words; no command reads it."),
    ("", "trackers"): (Rule(str, choices="orchestrator.trackers:TRACKERS", many=True),
                       "Experiment trackers every run of this experiment sends its lineages to, as `run --tracker`."),
}
# Keys of earlier versions whose meaning moved, with where it went (workers/migrate.py).
MOVED = MOVED_KEYS
EXPERIMENT_KEYS = set(AXES) | set(SECTIONS) | set(SCALARS)
TOP_KEYS = {"defaults", "experiments"}

# Merged under every experiment: a scalar at its spec default (arch), an axis
# whose field has a default as that one value (seeds: [0], methods: [imp]...).
BUILTIN_DEFAULTS: dict[str, Any] = {"resources": {"gpu": 1, "cpu": 4}, **{s: {} for s in SECTIONS if s != "resources"}}
for _f in _FIELDS:
    _m = _f.metadata
    if _f.default in (dataclasses.MISSING, None) or not (_m.get("axis") or _m.get("scalar")):
        continue
    if _m.get("scalar"):
        BUILTIN_DEFAULTS[_m["scalar"]] = _f.default
    else:
        BUILTIN_DEFAULTS[_m["axis"]] = [_f.default]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML silently keeps the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: str) -> dict:
    """Read and validate the whole file; returns {"defaults":..., "experiments": {...}}."""
    name = path
    if not os.path.exists(path):
        raise ConfigError(f"{name}: file not found")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        doc = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{name}: invalid YAML: {where}{problem}") from None
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror}") from None
    return validate(doc, name)


def validate(doc: Any, name: str = "experiments.yaml") -> dict:
    def err(path: str, msg: str):
        text = f"{name}: {path}: {msg}" if path else f"{name}: {msg}"
        # Keys and values are echoed back: keep the message on one line.
        raise ConfigError(text.replace("\r", "\\r").replace("\n", "\\n"))

    if not isinstance(doc, dict):
        err("", "the top level must be a mapping with an 'experiments' key")
    for k in doc:
        if k not in TOP_KEYS:
            err(str(k), f"unknown key; allowed: {', '.join(sorted(TOP_KEYS))}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        err("defaults", "must be a mapping")
    _check_experiment(defaults, "defaults", err, partial=True)
    exps = doc.get("experiments")
    if not isinstance(exps, dict) or not exps:
        err("experiments", "must be a non-empty mapping of experiment names")
    out = {}
    for ename, body in exps.items():
        path = f"experiments.{ename}"
        if not isinstance(ename, str) or not ename.replace("_", "").replace("-", "").isalnum():
            err(path, "experiment names use letters, digits, '_' and '-'")
        if not isinstance(body, dict):
            err(path, "must be a mapping")
        merged = _merge(_merge(BUILTIN_DEFAULTS, defaults), body)
        _check_experiment(body, path, err, partial=True)
        _check_experiment(merged, path, err, partial=False)
        out[ename] = merged
    return {"defaults": defaults, "experiments": out}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _check_experiment(body: dict, path: str, err, partial: bool) -> None:
    for k, v in body.items():
        p = f"{path}.{k}"
        if k in MOVED:
            err(p, MOVED[k])
        if k not in EXPERIMENT_KEYS:
            err(p, f"unknown key; allowed: {', '.join(sorted(EXPERIMENT_KEYS))}")
        if k == "seeds" and isinstance(v, dict):
            # The adaptive form (orchestrator/adaptive.py): seeds added per cell while its claim is open.
            msg = adaptive.check(v, partial)
            if msg:
                err(p, msg)
        elif k in AXES:
            if not isinstance(v, list) or not v:
                err(p, f"must be a non-empty list, got {v!r}")
            check = AXES[k]
            for i, item in enumerate(v):
                msg = check(item)
                if msg:
                    err(f"{p}[{i}]", msg)
            if len(set(map(repr, v))) != len(v):
                err(p, "has duplicate entries")
        elif k in SECTIONS:
            if not isinstance(v, dict):
                err(p, f"must be a mapping, got {v!r}")
            for sk, sv in v.items():
                if sk not in SECTIONS[k]:
                    err(f"{p}.{sk}", f"unknown key; allowed: {', '.join(sorted(SECTIONS[k]))}")
                msg = SECTIONS[k][sk](sv)
                if msg:
                    err(f"{p}.{sk}", msg)
        elif k in SCALARS:
            msg = SCALARS[k](v)
            if msg:
                err(p, msg)
    if partial:
        return
    for required in ("datasets",):
        if required not in body:
            err(f"{path}.{required}", "is required")
    if "fractions" not in body and "images_per_class" not in body:
        err(f"{path}.fractions", "is required (or images_per_class)")
    epochs = body["train"].get("epochs", TrainSpec.epochs)
    rewind = body["imp"].get("rewind_epoch", PruneSpec.rewind_epoch)
    if rewind >= epochs:
        err(f"{path}.imp.rewind_epoch", f"{rewind} leaves no epoch to train after rewinding "
                                        f"(train.epochs is {epochs}); it must be below epochs")
    for axis, param in _DATASET_PARAMS.items():
        lacking = [d for d in body["datasets"] if param not in data.dataset_info(d).params]
        if axis in body and lacking:
            takers = [d for d in sorted(data.DATASETS) if param in data.dataset_info(d).params]
            err(f"{path}.{axis}", f"{lacking[0]} takes no {param}; datasets that do: {', '.join(takers)}")
    for key, ev in sorted(_ANALYSIS.items()):
        ev.check_experiment(body["datasets"], body["analysis"].get(key), lambda msg: err(f"{path}.analysis.{key}", msg))
    archs = body.get("archs") or [body["arch"]]
    for method in body["methods"]:
        parent = METHODS[method].parent
        if parent and parent not in body["methods"]:
            err(f"{path}.methods", f"{method} is built from the {parent} lineage of each grid point: "
                                   f"add {parent} to methods")
        variant = METHODS[method].variant
        for arch in archs:
            if variant not in ARCHS[arch].variants:
                err(f"{path}.methods", f"{method} needs the {variant} variant, which {arch} does not have "
                                       f"(it has: {', '.join(ARCHS[arch].variants)})")
    if body["model"].get("init", "random") != "random" and body["model"].get("width", 1) != 1:
        err(f"{path}.model.width", "pretrained inits (model.init) need width 1")
    unused = set(body["resources"].get("by_fraction", {})) - set(body.get("fractions", []))
    if unused:
        err(f"{path}.resources.by_fraction",
            f"{number(min(unused))} is not one of the experiment's fractions")


# Axes that set a dataset's own parameter (DataSpec.params: imbalances -> imbalance).
_DATASET_PARAMS = {f.metadata["axis"]: f.name for part, f in spec_fields()
                   if part == "data" and f.name in {p for d in data.DATASETS for p in data.dataset_info(d).params}}
# analysis key -> the evaluation it configures (the key is the evaluation's name)
_ANALYSIS = {e.option: e for e in EVALUATIONS.values()}
