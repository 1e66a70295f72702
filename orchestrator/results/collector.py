"""The Collector: keeps a sweep's Parquet shards (shards.py) equal to its manifests.

It is one concern, the writing side of the table: rows appended per round
(rowfiles.py), folded into the shards and checked against the lineages'
pointers (sync: what a run's start, a compaction during the run and its end
do), derived again from the manifests where they disagree (update, rebuild).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from workers.store import SweepStore

from . import rowfiles
from .rows import round_precision, round_rows, rows_for_trial
from .schema import SCHEMAS, NewerSchemaError, ResultsError
from .shards import _checked_dataset, _is_shard, _to_table, shard_of, tables_for

log = logging.getLogger("lth_sweep.results")


class Collector:
    """Keeps the shards equal to the manifests of the trials it is told about.

    During a run, append_round() adds each committed round as row files
    (rowfiles.py) from its one manifest; compact() folds them into the shards,
    checked against the lineages' pointers (sync), during the run once enough
    have piled up (compact_if_due, in a thread of its own) and at its end;
    rebuild() derives everything from the manifests. One lock serialises every
    shard rewrite: two read-modify-writes of the same shard must not
    interleave (the later would drop the earlier's rows). Appends take another,
    so a compaction never holds up the run; a row file appended again while a
    compaction runs is not deleted by it (its trial's generation moved on).
    """

    # A compaction during a run once this many rounds were appended since the last
    # one, or this many seconds passed with some pending: reading the table mid-run
    # then costs at most about this many row-file reads (env: LTH_COMPACT_EVERY, LTH_COMPACT_S).
    COMPACT_EVERY = 256
    COMPACT_S = 600.0

    def __init__(self, sweep_store: SweepStore):
        self.store = sweep_store
        self._lock = threading.Lock()       # shard rewrites
        self._rows_lock = threading.Lock()  # appends and what they track
        self._precisions: dict[str, dict[int, Optional[str]]] = {}  # per trial: round -> its precision
        self.appended = 0  # rounds appended by append_round
        self.committed: dict[str, int] = {}  # per trial: 1 + the newest round appended
        self._gen: dict[str, int] = defaultdict(int)  # per trial: row-file writes by this collector
        self._since, self._last = 0, time.monotonic()  # appends since the last compaction, and when
        self._compactor: Optional[threading.Thread] = None
        self.compactions = 0

    def append_round(self, trial_id: str, k: int) -> bool:
        """Append committed round k of a trial as row files, from its manifest
        alone: a constant number of storage operations at any sweep size. False
        if round k is not committed (any more)."""
        lin = self.store.lineage(trial_id)
        man = lin.read_manifest(k)
        if man is None or man.get("round") != k:
            return False
        with self._rows_lock:
            self._gen[trial_id] += 1
            seen = self._precisions.get(trial_id)
            if seen is None:  # first round of this trial in this process: the lineage's earlier ones
                # read by number (no listing): the rounds before k are committed if k is
                seen = {j: round_precision(m) for j, m in lin.read_manifests(range(k)).items()}
            before = {p for j, p in seen.items() if j < k and p}
            seen = {**{j: p for j, p in seen.items() if j < k}, k: round_precision(man)}
            self._precisions[trial_id] = seen
            now = {p for p in seen.values() if p}
            if before and now != before:
                # A lineage continued in another arithmetic is another cell: its earlier rows change too.
                self._append_trial(trial_id, evaluations=False)
            else:
                row, layers = round_rows(self.store.sweep, trial_id, k, man, "+".join(sorted(now)) or None)
                rowfiles.write(self.store, "results", rowfiles.round_file(trial_id, k), [row])
                if layers:
                    rowfiles.write(self.store, "layers", rowfiles.round_file(trial_id, k), layers)
            self.appended += 1
            self._since += 1
            # A lineage commits its rounds in order: the newest one appended bounds its prefix.
            self.committed[trial_id] = max(self.committed.get(trial_id, 0), k + 1)
        return True

    def append_trial(self, trial_id: str) -> None:
        """A trial's rows of every table as row files, derived from its manifests
        and evaluations (once per trial, when its evaluations are written)."""
        with self._rows_lock:
            self._gen[trial_id] += 1
            self._since += 1
            self._append_trial(trial_id, evaluations=True)

    def compact_if_due(self) -> bool:
        """Start a compaction in a thread of its own if enough rounds were appended
        (or enough time passed) since the last one and none is running."""
        every = int(os.environ.get("LTH_COMPACT_EVERY", self.COMPACT_EVERY))
        period = float(os.environ.get("LTH_COMPACT_S", self.COMPACT_S))
        with self._rows_lock:
            due = self._since >= every or (self._since and time.monotonic() - self._last >= period)
            if not due or (self._compactor is not None and self._compactor.is_alive()):
                return False
            self._since, self._last = 0, time.monotonic()

        def work():
            try:
                self.compact()
                self.compactions += 1
            except Exception as e:  # the table is derived: the run's end or next start folds them
                log.warning("results table: compaction during the run failed (%s: %s)", type(e).__name__, e)
        self._compactor = threading.Thread(target=work, name="lth-compact", daemon=True)
        self._compactor.start()
        return True

    def wait_compaction(self, timeout: Optional[float] = None) -> None:
        """Wait for a compaction started by compact_if_due (a stop waits a bounded time)."""
        t = self._compactor
        if t is not None:
            t.join(timeout)

    def compact(self) -> int:
        """Fold the pending row files into the shards (sync over the trials they
        name). Idempotent; a kill at any point leaves no key twice. Returns the
        number of row files folded in."""
        return self.sync()["folded"]

    def sync(self, trial_ids: Iterable[str] = (), pointers: Optional[dict[str, dict]] = None,
             threads: int = 16) -> dict:
        """Fold the pending row files into the shards and make the rows of the
        trials they name, and of `trial_ids`, agree with their lineages' pointers
        ({round: manifest digest}, workers/store.py): a trial whose rows do not (a
        round missing or un-committed, a row of a redone round, rows from before
        schema 5) is derived again from its manifests. What it reads grows with
        the trials and the pending files, not with their rounds: a pointer per
        trial (or `pointers`, read already), each touched shard, each file; shards
        are done `threads` at a time, and one with nothing to change is not written.
        The files listed are deleted last (a kill before: they replace rows equal
        to them). Returns {"folded": row files, "derived": trial ids, "shards": written,
        "wall": (sum, count) of the rounds' wall_s (what `status` estimates with)}."""
        from concurrent.futures import ThreadPoolExecutor
        with self._lock:
            gens = self._generations()  # before the listing: what is appended after it is not deleted
            listed = {kind: rowfiles.listing(self.store, kind) for kind in SCHEMAS}
            keys = {kind: rowfiles.pending(names) for kind, names in listed.items()}
            tids = set(trial_ids) | {tid for ks in keys.values() for tid, _ in ks.values()}
            known = dict(pointers or {})
            known.update(self.store.pointers(sorted(tids - known.keys())))
            by_shard: dict[str, set[str]] = defaultdict(set)
            for t in tids:
                by_shard[shard_of(t)].add(t)
            with ThreadPoolExecutor(max(1, min(threads, len(by_shard) or 1))) as pool:
                outcomes = list(pool.map(lambda item: self._sync_shard(item[0], item[1], keys, known),
                                         sorted(by_shard.items())))
            self._delete_listed(self._unchanged(listed, gens))
        return {"folded": sum(len(k) for k in keys.values()),
                "derived": sorted(t for derived, _, _ in outcomes for t in derived),
                "shards": sum(written for _, written, _ in outcomes),
                "wall": (sum(w[0] for _, _, w in outcomes), sum(w[1] for _, _, w in outcomes))}

    def update(self, trial_ids: Iterable[str]) -> None:
        """Replace those trials' rows with fresh ones from their manifests."""
        by_shard: dict[str, set[str]] = defaultdict(set)
        for t in trial_ids:
            by_shard[shard_of(t)].add(t)
        with self._lock:
            listed = {kind: rowfiles.listing(self.store, kind) for kind in SCHEMAS}
            for shard, tids in sorted(by_shard.items()):
                self._update_shard(shard, tids)
            # Their pending row files are in the shards now (derived afresh).
            mine = {t for ts in by_shard.values() for t in ts}
            self._delete_listed({kind: [n for n, (tid, _) in rowfiles.pending(names).items() if tid in mine]
                                 for kind, names in listed.items()})

    def rebuild(self) -> None:
        """Derive every shard from all manifests (a shard whose bytes would not change
        is not rewritten: a run's start costs reads, not writes), fold in and delete
        the pending row files; drop shards with no rows left."""
        with self._lock:
            listed = {kind: rowfiles.listing(self.store, kind) for kind in SCHEMAS}
            by_shard: dict[str, list[str]] = defaultdict(list)
            for t in self.store.trial_ids():
                by_shard[shard_of(t)].append(t)
            for kind in SCHEMAS:
                folder = self.store.table_dir(kind)
                for name in self.store.fs.listdir(folder):
                    # Leftovers of killed writes, and shards of trials that are gone.
                    # Foreign files are left alone: reading then names them.
                    if ".tmp-" in name or (_is_shard(name) and name not in by_shard):
                        self.store.fs.delete_file(f"{folder}/{name}")
            for shard, tids in sorted(by_shard.items()):
                self._write_shard(shard, self._rows(tids), unless_same=True)
            self._delete_listed(listed)  # only after every shard is written (a kill before: no duplicate)

    def tables(self) -> dict[str, pa.Table]:
        """Every table as derived from the manifests now, without writing anything."""
        return self._rows(self.store.trial_ids())

    # --- internals (lock held) --------------------------------------------
    def _append_trial(self, trial_id: str, evaluations: bool) -> None:
        rowfiles.write_trial(self.store, trial_id, rows_for_trial(self.store, trial_id), evaluations)

    def _delete_listed(self, listed: dict[str, list[str]]) -> None:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(16) as pool:  # one request each on S3: not one at a time
            list(pool.map(lambda item: rowfiles.delete(self.store, {item[0]: [item[1]]}),
                          [(kind, n) for kind, names in listed.items() for n in names]))

    def _generations(self) -> dict[str, int]:
        with self._rows_lock:
            return dict(self._gen)

    def _unchanged(self, listed: dict[str, list[str]], gens: dict[str, int]) -> dict[str, list[str]]:
        """The listed names whose trial this collector has not appended to since `gens`."""
        now = self._generations()
        keep = {t for t, g in now.items() if gens.get(t, 0) != g}
        return {kind: [n for n in names if (key := rowfiles.key_of(n)) is None or key[0] not in keep]
                for kind, names in listed.items()}

    def _rows(self, trial_ids: Iterable[str]) -> dict[str, pa.Table]:
        return tables_for(self.store, trial_ids)

    def _sync_shard(self, shard: str, tids: set[str], keys: dict[str, dict], pointers: dict[str, dict]
                    ) -> tuple[set[str], int, tuple[float, int]]:
        """One shard of sync(): (trials derived again, 1 if written else 0, (sum, count) of
        its trials' wall_s). The results
        shard is read first (one read) and checked against the pointers; the other
        tables' shards are read only when this shard is to be written."""
        names = {kind: [n for n, (tid, _) in ks.items() if shard_of(tid) == shard] for kind, ks in keys.items()}
        tables: dict[str, pa.Table] = {}
        derived: set[str] = set()

        def read(kind: str) -> pa.Table:
            base = rowfiles.read_path(self.store, kind, self.store.table_file(kind, shard), f"{kind}/{shard}")
            return rowfiles.overlay(self.store, kind, SCHEMAS[kind].empty_table() if base is None else base,
                                    names[kind])
        try:
            tables["results"] = read("results")
        except NewerSchemaError:
            raise  # written by a newer lth-sweep: rewriting it would downgrade it
        except ResultsError:  # a torn/foreign shard is derived data: every trial of it is derived again
            derived = {t for t in self.store.trial_ids() if shard_of(t) == shard} | tids
            tables = {kind: schema.empty_table() for kind, schema in SCHEMAS.items()}
        have: dict[str, dict[int, Optional[str]]] = defaultdict(dict)
        wall = [0.0, 0]
        for r in tables["results"].select(["trial_id", "round", "manifest_sha256", "wall_s"]).to_pylist():
            if r["trial_id"] in tids:
                have[r["trial_id"]][r["round"]] = r["manifest_sha256"]
                if r["wall_s"] is not None:
                    wall = [wall[0] + r["wall_s"], wall[1] + 1]
        derived |= {t for t in tids if have.get(t, {}) != pointers.get(t, {}).get("rounds", {})}
        if not derived and not any(names.values()):
            return derived, 0, tuple(wall)  # the shard already says what the pointers say
        for kind in SCHEMAS:
            if kind not in tables:
                try:
                    tables[kind] = read(kind)
                except NewerSchemaError:
                    raise
                except ResultsError:
                    derived |= {t for t in self.store.trial_ids() if shard_of(t) == shard}
                    tables[kind] = SCHEMAS[kind].empty_table()
        if derived:
            fresh = self._rows(derived)
            gone = pa.array(sorted(derived), pa.string())
            tables = {k: pa.concat_tables([t.filter(pc.invert(pc.is_in(t["trial_id"], value_set=gone))).cast(
                SCHEMAS[k]), fresh[k]]) for k, t in tables.items()}
        self._write_shard(shard, tables)
        return derived, 1, tuple(wall)

    def _update_shard(self, shard: str, tids: set[str]) -> None:
        kept = {}
        try:
            for kind in SCHEMAS:
                path = self.store.table_file(kind, shard)
                if self.store.fs.exists(path):
                    table = _to_table(_checked_dataset(self.store, [path], kind)[0])
                    stale = pc.is_in(table["trial_id"], value_set=pa.array(sorted(tids)))
                    kept[kind] = table.filter(pc.invert(stale))
                else:
                    kept[kind] = SCHEMAS[kind].empty_table()
        except NewerSchemaError:
            raise  # written by a newer lth-sweep: rewriting it would downgrade it
        except ResultsError:
            # A torn/foreign shard is derived data: rebuild it from its trials' manifests.
            tids = {t for t in self.store.trial_ids() if shard_of(t) == shard}
            kept = {kind: schema.empty_table() for kind, schema in SCHEMAS.items()}
        fresh = self._rows(tids)
        self._write_shard(shard, {k: pa.concat_tables([kept[k], fresh[k]]) for k in SCHEMAS})

    def _write_shard(self, shard: str, tables: dict[str, pa.Table], unless_same: bool = False) -> None:
        for kind, table in tables.items():
            path = self.store.table_file(kind, shard)
            if table.num_rows == 0:
                if not unless_same or self.store.fs.exists(path):
                    self.store.fs.delete_file(path)
                continue
            data = rowfiles.encode(table, kind)
            if not (unless_same and rowfiles.holds(self.store, path, data)):
                self.store.fs.write(path, data)
