"""The experiments.yaml reference, written from the schema's own help text.

Every key an experiment may set comes from orchestrator/config.py's schema
(AXES, SCALARS, SECTIONS), which is derived from the spec's fields
(workers/spec.py), the registered evaluations and the few keys config.py
defines itself; each carries one sentence of help (`spec_field(help=...)`,
`Evaluation.help`, `config.KEY_HELP`). `reference()` turns them into the
markdown that docs/hooks.py puts into docs/experiments-yaml.md at build time,
so the page cannot drift from what the loader accepts, and `undocumented()`
names the keys without help (tests/test_docs.py fails on any).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from orchestrator import config
from orchestrator.checkers import registry_keys
from orchestrator.formatting import number
from workers.evaluations import EVALUATIONS
from workers.spec import RunOptions, Rule, spec_fields

# The reference's sections in reading order (a section config.py gains later goes last).
ORDER = ("train", "imp", "model", "eval", "resources", "runtime", "analysis")


@dataclass(frozen=True)
class Key:
    """One key of an experiment: `section` "" for the experiment's own keys."""
    section: str
    key: str
    allowed: str
    default: str
    help: str

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}" if self.section else self.key


def allowed(rule: Any) -> str:
    """What a value may be, in words, from a Rule (or words already)."""
    if not isinstance(rule, Rule):
        return str(rule)
    if rule.choices:
        one = "one of " + ", ".join(f"`{k}`" for k in registry_keys(rule.choices))
    elif rule.kind is bool:
        one = "true or false"
    elif rule.kind is str:
        one = "text"
    else:
        one = ("an integer" if rule.kind is int else "a number") + _bounds(rule)
    return f"a list, each {one}" if rule.many else one


def _bounds(rule: Rule) -> str:
    if rule.lo is not None and rule.hi is not None:
        return f" in {'(' if rule.lo_open else '['}{number(rule.lo)}, {number(rule.hi)}{')' if rule.hi_open else ']'}"
    if rule.lo is not None:
        return f" {'>' if rule.lo_open else '>='} {number(rule.lo)}"
    return ""


def shown(value: Any) -> str:
    """A default as experiments.yaml would spell it."""
    if value is None or value is dataclasses.MISSING:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def keys() -> list[Key]:
    """Every key of config's schema with its words: grid axes, then the
    experiment's own scalars, then each section's keys."""
    fields = [f for _, f in spec_fields()] + [f for f in dataclasses.fields(RunOptions) if f.metadata]
    by = {}
    for f in fields:
        m = f.metadata
        for place in (("", m.get("axis")), ("", m.get("scalar")), m.get("yaml")):
            if place and place[1]:
                by[tuple(place)] = f
    evaluations = {e.option: e for e in EVALUATIONS.values()}
    defaults = config.BUILTIN_DEFAULTS

    def entry(section: str, key: str) -> Key:
        if (section, key) in by:
            f = by[(section, key)]
            rule, help_text = f.metadata["rule"], f.metadata.get("help", "")
            # An axis unset in the yaml takes the built-in default (config.BUILTIN_DEFAULTS), if any.
            default = defaults.get(key) if not section else f.default
            if key in config.AXES:
                rule = dataclasses.replace(rule, many=True)
        elif section == "analysis" and key in evaluations:
            ev = evaluations[key]
            rule, help_text, default = ev.rule, getattr(ev, "help", ""), ev.default
        else:
            rule, help_text = config.KEY_HELP.get((section, key), ("", ""))
            default = defaults.get(section, {}).get(key) if section else defaults.get(key)
        return Key(section, key, allowed(rule), shown(default), help_text)

    out = [entry("", k) for k in config.AXES]
    out += [entry("", k) for k in config.SCALARS]
    for section in sorted(config.SECTIONS, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s)):
        out += [entry(section, k) for k in config.SECTIONS[section]]
    return out


def undocumented(entries: list[Key] | None = None) -> list[str]:
    """The keys that have no help sentence."""
    return [k.path for k in (keys() if entries is None else entries) if not k.help.strip()]


def _table(entries: list[Key]) -> list[str]:
    rows = ["| key | value | default | what it does |", "|---|---|---|---|"]
    rows += [f"| `{k.key}` | {k.allowed} | {k.default if k.default == 'unset' else f'`{k.default}`'} | {k.help} |"
             for k in entries]
    return rows + [""]


def reference(entries: list[Key] | None = None) -> str:
    """The reference as markdown: one table per group of keys."""
    entries = keys() if entries is None else entries
    lines = ["### Grid axes", "",
             "Each is a list; an experiment's trials are every combination of its axes' values.", ""]
    lines += _table([k for k in entries if not k.section and k.key in config.AXES])
    lines += ["### Experiment settings", "", "One value for every trial of the experiment.", ""]
    lines += _table([k for k in entries if not k.section and k.key not in config.AXES])
    for section in dict.fromkeys(k.section for k in entries if k.section):
        lines += [f"### `{section}:`", ""]
        lines += _table([k for k in entries if k.section == section])
    lines += ["### Keys of earlier versions", "", "Refused with this message, so an old file says what to change:",
              "", "| key | message |", "|---|---|"]
    lines += [f"| `{k}` | {msg} |" for k, msg in config.MOVED.items()]
    return "\n".join(lines) + "\n"
