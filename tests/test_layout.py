"""The shape of the code a newcomer reads: modules of one concern, short
parameter lists, and rules written once."""
from __future__ import annotations

import ast
import os
import re

import pytest

from tests.helpers import ROOT

PACKAGES = ("orchestrator", "workers", "bench")
MAX_PARAMS = 8
MAX_LINES = 300
MAX_ENGINE_LINES = 400


def _files(*packages):
    for pkg in packages:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    yield os.path.relpath(os.path.join(folder, f), ROOT)


def _params(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return len(names) - (1 if names and names[0] in ("self", "cls") else 0)


def test_no_function_takes_more_than_eight_parameters():
    long = []
    for path in _files(*PACKAGES):
        tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
        long += [f"{path}:{n.lineno} {n.name}({_params(n)})" for n in ast.walk(tree)
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and _params(n) > MAX_PARAMS]
    assert not long, "group these parameters into a frozen object: " + ", ".join(long)


@pytest.mark.parametrize("path", list(_files("orchestrator")))
def test_an_orchestrator_module_is_short_or_says_why_it_is_one_concern(path):
    text = open(os.path.join(ROOT, path)).read()
    if text.count("\n") <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert "one concern" in doc, f"{path}: {text.count(chr(10))} lines and no docstring saying why it is one concern"


@pytest.mark.parametrize("path", list(_files("orchestrator", "workers")))
def test_no_module_of_the_engine_is_over_400_lines(path):
    """A room of one concern reads top to bottom: past ~400 lines a module holds
    two (the training loop apart from inference, the fused program apart from
    its layers, the lineage store apart from the filesystem)."""
    lines = open(os.path.join(ROOT, path)).read().count("\n")
    assert lines <= MAX_ENGINE_LINES, f"{path}: {lines} lines; split it by concern"


def test_the_finished_lineage_round_count_is_written_once():
    # workers/spec.py `num_rounds` / TrialSpec.num_rounds: round 0 + prune.rounds.
    rule = re.compile(r"rounds \+ 1|rounds\"\] \+ 1")
    found = [f"{p}:{i}" for p in _files(*PACKAGES, "tests") if p != os.path.join("workers", "spec.py")
             for i, line in enumerate(open(os.path.join(ROOT, p)), 1) if rule.search(line)]
    assert not found, found
