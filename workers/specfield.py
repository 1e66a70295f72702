"""What a spec field declares besides its value: the rule its value follows,
where experiments.yaml sets it, whether it is a results column, and the one
sentence that documents it. workers/spec.py declares its fields with these;
orchestrator/config.py derives the yaml schema from them and
orchestrator/schema_doc.py the experiments.yaml reference, so neither is
written twice."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Rule:
    """What a value of a spec field may be, for orchestrator/config.py to check:
    its type, bounds (open or closed) and, by "module:NAME", the registry its
    value must be a key of (resolved by the checker, so no registry is
    imported here). `many`: a list of such values without duplicates."""
    kind: type
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Optional[str] = None
    many: bool = False


def spec_field(default: Any = dataclasses.MISSING, *, rule: Rule, yaml: Optional[tuple[str, str]] = None,
               axis: Optional[str] = None, scalar: Optional[str] = None, column: bool = False,
               shown: bool = False, help: str = "") -> Any:
    """A spec field with what the rest of the project derives from it:

    yaml    (section, key) that sets it in experiments.yaml (e.g. ("train", "epochs"))
    axis    the yaml list that makes it a grid axis (e.g. "datasets")
    scalar  a top-level yaml key that sets it for every trial (e.g. "arch")
    column  a column of the results table (a round's metrics may override it:
            a method that builds its own network per round records its width)
    shown   a column of every comparison table (the rest are shown where cells differ)
    help    one plain sentence for the experiments.yaml reference; a field the
            yaml sets without one fails tests/test_docs.py. Metadata, so never
            part of a trial's id (the id hashes values only)
    """
    meta = {"rule": rule, "yaml": yaml, "axis": axis, "scalar": scalar, "column": column, "shown": shown,
            "help": help}
    return field(default=default, metadata=meta)
