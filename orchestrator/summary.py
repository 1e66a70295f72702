"""The sweep's summary: what `status` reads instead of listing every file of the sweep.

    <sweep>/STATUS.json   {"time", "state": "running" | "ended", "committed": {trial_id: k},
                           "running": [trial_id], "failed": [trial_id], "mean_round_s"}

Listing a sweep is a request per 1,000 objects: some 300 at the paper's whole
grid (3,000 lineages of 17 rounds), tens of seconds on S3, and more the longer
it runs. The driver knows all of it already (the pointers it read at its start,
each round it appended, which trials Tune runs), so it writes it down: at its
start, every SUMMARY_S while it runs, and at its end. `status` then reads this
one object and the names of the row files appended since (results/_rows/: a
round committed after the summary was written is one of them), so its cost does
not grow with the sweep.

It is derived, like the table: the manifests are the truth, and a summary
whose driver stopped writing it (killed) says nothing about what runs; `status`
counts a trial as running only while the summary is younger than LIVE_S.
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

from workers.store import SweepStore

SUMMARY_S = 60.0  # a running driver rewrites the summary this often


class Summary:
    """The driver's view of its sweep, kept current and written to STATUS.json."""

    def __init__(self, sweep: SweepStore, committed: dict[str, int], wall: tuple[float, int] = (0.0, 0)):
        self.sweep = sweep
        self.committed = dict(committed)
        self.running: set[str] = set()
        self.failed: set[str] = set()
        self._wall_sum, self._wall_n = wall
        self._written = 0.0

    def round(self, trial_id: str, k: int, wall_s: Optional[float]) -> None:
        self.committed[trial_id] = max(self.committed.get(trial_id, 0), k + 1)
        self.failed.discard(trial_id)
        if wall_s is not None:
            self._wall_sum, self._wall_n = self._wall_sum + float(wall_s), self._wall_n + 1

    def started(self, trial_ids: Iterable[str]) -> None:
        self.running |= set(trial_ids)
        self.failed -= set(trial_ids)

    def ended(self, trial_ids: Iterable[str], failed: bool = False) -> None:
        self.running -= set(trial_ids)
        if failed:
            self.failed |= set(trial_ids)

    def write(self, state: str = "running") -> None:
        self._written = time.monotonic()
        self.sweep.write_json(self.sweep.STATUS, {
            "time": time.time(), "state": state, "committed": dict(sorted(self.committed.items())),
            "running": sorted(self.running), "failed": sorted(self.failed),
            "mean_round_s": self._wall_sum / self._wall_n if self._wall_n else None})

    def write_if_due(self) -> bool:
        if time.monotonic() - self._written < SUMMARY_S:
            return False
        self.write()
        return True


def read_summary(sweep: SweepStore) -> Optional[dict]:
    """The summary if present and well-formed, else None (status lists the sweep instead)."""
    try:
        doc = sweep.read_json(sweep.STATUS)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("committed"), dict):
        return None
    return doc
