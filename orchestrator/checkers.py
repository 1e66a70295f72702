"""The yaml's value checks: each takes a value and returns an error string
(what is wrong, naming what is allowed) or None. `checker(rule)` is the check
of a spec field's Rule (workers/spec.py), so the schema in
orchestrator/config.py is derived from the spec, not written twice."""
from __future__ import annotations

import importlib
import math

from orchestrator.formatting import number
from workers.spec import Rule


def integer(lo=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{v!r} is not an integer"
        if lo is not None and v < lo:
            return f"{v!r} must be >= {number(lo)}"
    return check


def number_in(lo=None, hi=None, lo_open=False, hi_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{v!r} is not a number"
        if lo is not None and (v < lo or (lo_open and v == lo)) or \
                hi is not None and (v > hi or (hi_open and v == hi)):
            lb = "(" if lo_open else "["
            rb = ")" if hi_open else "]"
            return f"{v!r} is outside {lb}{'-inf' if lo is None else number(lo)}, " \
                   f"{'inf' if hi is None else number(hi)}{rb}"
    return check


def boolean(v):
    if not isinstance(v, bool):
        return f"{v!r} is not true/false"


def choice(options):
    def check(v):
        if v not in options():
            return f"{v!r} is not one of {', '.join(map(str, options()))}"
    return check


def text(v):
    if not isinstance(v, str) or not v:
        return f"{v!r} is not a non-empty string"


def names(one):
    def check(v):
        if not isinstance(v, list) or len(set(map(str, v))) != len(v):
            return f"{v!r} is not a list without duplicates"
        for x in v:
            msg = one(x)
            if msg:
                return msg
    return check


def registry_keys(ref: str):
    """The keys of a registry named "module:NAME" (a dict's in sorted order)."""
    mod, _, name = ref.partition(":")
    reg = getattr(importlib.import_module(mod), name)
    return sorted(reg) if isinstance(reg, dict) else list(reg)


def checker(rule: Rule):
    """The check of a spec field's Rule (workers/spec.py)."""
    if rule.choices:
        one = choice(lambda: registry_keys(rule.choices))
    elif rule.kind is bool:
        one = boolean
    elif rule.kind is int:
        one = integer(rule.lo)
    elif rule.kind is float:
        one = number_in(rule.lo, rule.hi, rule.lo_open, rule.hi_open)
    else:
        one = text
    return names(one) if rule.many else one


def by_fraction(v):
    """{fraction: {gpu: .., cpu: ..}}: per-data-size resources, e.g. four 1% trials per GPU."""
    if not isinstance(v, dict) or not v:
        return f"{v!r} is not a mapping of fraction -> {{gpu, cpu}}"
    for f, r in v.items():
        bad = number_in(0, 1, lo_open=True)(f)
        if bad:
            return f"key {bad}"
        if not isinstance(r, dict) or not r or set(r) - {"gpu", "cpu"}:
            return f"{number(f)}: {r!r} is not a mapping with keys gpu and/or cpu"
        for k, x in r.items():
            bad = (number_in(0) if k == "gpu" else number_in(0, lo_open=True))(x)
            if bad:
                return f"{number(f)}.{k}: {bad}"
