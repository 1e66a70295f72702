"""What imports what: the workers never pull in the driver side, the trial
process imports no more of the orchestrator than it runs, and no import cycle
joins orchestrator modules or the modules of one workers package.

The graph is read from the sources (module-level imports only: an import
inside a function is deliberate laziness, e.g. Ray only when there is work),
so a test walks every module without importing ~70 of them in fresh
processes; two real processes check the entry points the static graph cannot
see through (third-party packages)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PACKAGES = ("orchestrator", "workers", "bench")


def _modules() -> dict[str, str]:
    """{dotted module name: file path} of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module `name` refers to (the longest known prefix), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking(node) -> bool:
    """`if TYPE_CHECKING:`: imports for annotations only, never run."""
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _runtime_nodes(tree):
    """Every node of `tree` outside `if TYPE_CHECKING:` blocks (inside functions too)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(c for c in ast.iter_child_nodes(node) if not _type_checking(c))


def _imports(module: str, lazy: bool = False) -> set[str]:
    """Imports of `module` (module level; with `lazy`, inside functions too):
    project modules and third-party roots."""
    path = MODULES[module]
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    if lazy:
        nodes = _runtime_nodes(tree)
    else:  # module level only, also inside top-level try/if
        nodes = (n for node in tree.body
                 for n in (ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node]))
    for n in nodes:
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - n.level + 1] + ([base] if base else []))
            # `from pkg import sub` needs pkg.sub, not what pkg's __init__ defines.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in n.names]
        else:
            continue
        for name in names:
            local = _resolve(name)
            found.add(local if local else name.split(".")[0])
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}
# With the imports inside functions: what a module can reach once it runs.
LAZY = {m: _imports(m, lazy=True) for m in MODULES}


def _reach(start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for nxt in GRAPH.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _cycles(within, graph=None) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan) in the subgraph `within`."""
    graph = GRAPH if graph is None else graph
    nodes = [m for m in graph if within(m)]
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if not within(w) or w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_the_imports_it_should():
    # The walker itself can fail: these edges exist.
    assert "workers.train" in GRAPH["workers.round"] and "workers.pruning" in GRAPH["workers.round"]
    assert "pyarrow" in GRAPH["workers.fs"]
    assert "orchestrator.grid" in GRAPH["orchestrator.driver"]
    assert _cycles(lambda m: True, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles(lambda m: True, {"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("workers")))
def test_a_worker_module_never_imports_the_driver_side(module):
    reach = _reach(module)
    assert not {m for m in reach if m.startswith(("orchestrator", "bench"))}, module
    assert "pandas" not in reach, module
    # pyarrow only through the storage layer (the store and its retrying filesystem), built on pyarrow.fs.
    storage = {"workers.store", "workers.fs", "workers.lineage_store", "workers.retry"}
    assert "pyarrow" not in reach or storage & reach or module in storage, module


@pytest.mark.parametrize("scope", ["orchestrator", "workers.data", "workers.methods", "workers.models",
                                   "workers.evaluations", "workers.pruning", "bench"])
def test_no_import_cycle(scope):
    def within(m):
        return m == scope or m.startswith(scope + ".") or (scope == "bench" and m.startswith("orchestrator"))
    assert _cycles(within) == []


def test_no_import_cycle_with_the_imports_inside_functions_counted():
    """A lazy import defers a cycle, it does not remove it: the project's whole
    graph, imports inside functions included (not `if TYPE_CHECKING:` ones), has
    none, and no worker module reaches the driver side even lazily."""
    # the walker sees inside functions, and not into `if TYPE_CHECKING:`
    assert "workers.retry" in LAZY["workers.fs"] and "workers.retry" not in GRAPH["workers.fs"]
    assert "workers.spec" not in LAZY["workers.migrate"]
    assert _cycles(lambda m: True, LAZY) == []
    for module in (m for m in MODULES if m.startswith("workers")):
        assert not {m for m in LAZY[module] if m.startswith(("orchestrator", "bench"))}, module


def _loaded_after(statement: str) -> set[str]:
    code = (f"import sys\n{statement}\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('orchestrator', 'workers', 'bench', 'pandas', 'pyarrow'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(r.stdout.split())


def test_the_trial_process_imports_no_driver_results_or_report():
    # What a Tune trial imports to run a unit: Ray Tune itself brings pandas and
    # pyarrow, so only the project's own modules are checked here.
    loaded = _loaded_after("import orchestrator.tune.trial")
    assert not {m for m in loaded if m.startswith(("orchestrator.driver", "orchestrator.results",
                                                   "orchestrator.report", "orchestrator.tables", "bench"))}, loaded
    assert {m for m in loaded if m.startswith("orchestrator")} <= {
        "orchestrator", "orchestrator.trackers", "orchestrator.tune", "orchestrator.tune.trial",
        "orchestrator.tune.trainable"}, loaded


def test_running_a_lineage_imports_neither_pandas_nor_the_orchestrator():
    loaded = _loaded_after("import orchestrator.tune.trainable, workers.group, workers.evaluations")
    assert "pandas" not in loaded
    assert {m for m in loaded if m.startswith("orchestrator")} <= {"orchestrator", "orchestrator.tune",
                                                                  "orchestrator.tune.trainable"}, loaded
