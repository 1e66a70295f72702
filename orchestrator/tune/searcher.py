"""Which unit Tune starts next: each as soon as the lineages it is built from
(Method.parent) have finished, and never one whose parent failed."""
from __future__ import annotations

from collections import deque

from ray.tune.search import Searcher

from orchestrator.grid import Unit
from workers.lease import log
from workers.methods import get_method, parent_spec
from workers.store import SweepStore


class UnitSearcher(Searcher):
    """Hands Tune the sweep's units (a lineage, or a fused group), each as soon
    as the lineages it is built from (Method.parent) have finished: one Tune
    run, no barrier between phases, no polling of storage. A unit whose parent
    failed is not started: its lineages get a FAILED marker naming the parent.
    Each call costs O(1) in the number of units (queues, not scans), so a
    10,000-trial sweep pays no quadratic bookkeeping."""

    def __init__(self, sweep: SweepStore, configs: list[dict], deps: dict[int, set[int]]):
        super().__init__(metric=None, mode=None)
        self.sweep, self.configs = sweep, configs
        self.waiting = {i: set(d) for i, d in deps.items() if d}  # unit -> parents not finished yet
        self.children: dict[int, list[int]] = {}
        for i, parents in sorted(self.waiting.items()):
            for p in parents:
                self.children.setdefault(p, []).append(i)
        self.ready = deque(i for i in range(len(configs)) if i not in self.waiting)
        self.released: deque = deque()  # parents just finished: their devices were waiting for these
        self.dropped: list[int] = []
        self.started: dict[str, int] = {}

    def suggest(self, trial_id: str):
        queue = self.released or self.ready
        if not queue:
            return Searcher.FINISHED if not self.waiting else None
        i = queue.popleft()
        self.started[trial_id] = i
        return {"unit": self.configs[i]}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a new run derives what is left from storage."""

    def restore(self, checkpoint_path: str) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        i = self.started.get(trial_id)
        if i is None:
            return
        if error:
            self._drop_dependents(i)
            return
        for c in self.children.get(i, ()):
            parents = self.waiting.get(c)
            if parents is None:
                continue  # dropped already: another parent failed
            parents.discard(i)
            if not parents:
                del self.waiting[c]
                self.released.append(c)
                log(f"{self.configs[c]['unit_id']} starts: what it is built from has finished")

    def _drop_dependents(self, failed: int) -> None:
        stack = [failed]
        while stack:
            p = stack.pop()
            for c in self.children.get(p, ()):
                if self.waiting.pop(c, None) is not None:
                    self.dropped.append(c)
                    self._mark_dependent_failed(c, p)
                    stack.append(c)

    def _mark_dependent_failed(self, i: int, parent: int) -> None:
        pid = self.configs[parent]["unit_id"]
        marker = self.sweep.lineage(pid).read_marker("FAILED.json") if pid in self.configs[parent]["members"] else None
        cause = (marker or {}).get("error", "see its FAILED.json")
        for tid in self.configs[i]["members"]:
            try:
                self.sweep.lineage(tid).mark_failed(f"not started: built from lineage {pid}, which failed ({cause})",
                                                    parent=pid)
            except OSError:
                pass
        log(f"{self.configs[i]['unit_id']} FAILED: built from lineage {pid}, which failed ({cause})")


def dependencies(todo: list[Unit]) -> dict[int, set[int]]:
    """{unit index: indices of the units holding the lineages its lineages are built from}."""
    where = {t.trial_id: i for i, u in enumerate(todo) for t in u.trials}
    deps: dict[int, set[int]] = {}
    for i, u in enumerate(todo):
        for t in u.trials:
            if get_method(t.spec.prune.method).parent:
                pid = parent_spec(t.spec).trial_id
                if pid in where and where[pid] != i:
                    deps.setdefault(i, set()).add(where[pid])
    return deps
