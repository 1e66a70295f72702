"""Storage layout and the atomic round commit.

Every path of a sweep is built here (the sweep's) and in workers/lineage_store.py
(a lineage's), nowhere else:

    <storage>/<sweep>/
        sweep.json                       the trial list of the last `run` (for `status`)
        trials/<trial_id>/spec.json      the full trial spec
        trials/<trial_id>/round_<k>/     weights.sparse.safetensors (workers/checkpoint.py),
                                         mask.safetensors, [rewind.safetensors in round 0],
                                         metrics.json, predictions.safetensors,
                                         MANIFEST.json (written last, atomically)
        trials/<trial_id>/partial/round_<k>/epoch_<e>/   rolling mid-round checkpoint
        trials/<trial_id>/HEARTBEAT.json / FAILED.json
        trials/<trial_id>/COMMITTED.json the committed prefix and its manifests' digests
                                         (derived: a restart reads it, not every manifest)
        results/  layers/                Parquet, derived from the manifests

A round exists only if its MANIFEST.json exists and verifies: the manifest
carries the sha256 of every file of the round and of itself, so a torn write,
a truncated file or a flipped bit is detected rather than trusted. Data files
are written first, the manifest last (big_vision's pattern); on a local/NFS
path the manifest lands by fsync + rename, on S3 a single PUT is atomic
(workers/fs.py: a local path and `s3://bucket/prefix` through one code path).
"""
from __future__ import annotations

import json
from typing import Iterable

import pyarrow.fs as pafs

# Callers import the storage errors, the filesystem and a lineage's part from here.
from workers.errors import CorruptRound, StorageError, TakenOver  # noqa: F401
from workers.fs import FS, _SAFE_NAME, check_name
from workers.lineage_store import MANIFEST, _ROUND_MANIFEST, LineageStore, _dumps  # noqa: F401


class SweepStore:
    """Paths and whole-sweep reads of one sweep folder."""

    PLAN = "sweep.json"            # the trial list of the last `run` (for `status`)
    RUN = "RUN.json"               # the last `run`'s timings (start, Ray start-up, trials, end)
    LEASE = "DRIVER_LEASE.json"    # the driver's lease on object stores (workers/lease.py)
    LOCK = ".driver.lock"          # the driver's file lock on local/NFS paths
    STATUS = "STATUS.json"         # the driver's summary of the sweep (orchestrator/summary.py)

    def __init__(self, storage: str, sweep: str):
        self.fs = FS(storage)
        self.sweep = check_name("sweep", sweep)
        self.dir = self.fs.join(sweep)

    def path(self, *parts: str) -> str:
        return "/".join([self.dir] + list(parts))

    def table_dir(self, kind: str) -> str:
        """The folder of a Parquet table (results, layers, robustness, ...)."""
        return self.path(check_name("table", kind))

    def table_file(self, kind: str, shard: str) -> str:
        return f"{self.table_dir(kind)}/{shard}"

    @property
    def results_dir(self) -> str:
        return self.table_dir("results")

    @property
    def tune_dir(self) -> str:
        """Ray Tune's own experiment state (not a record of what is done)."""
        return self.path("_tune")

    def listing(self) -> dict[str, dict]:
        """One recursive listing of trials/: per trial id, {"rounds": {k: mtime_s} (rounds with a manifest
        file), "heartbeat": mtime_s, "failed": bool, "spec": bool}; on S3 a few paged LISTs, not some per trial."""
        base = self.path("trials")
        try:
            infos = self.fs.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            infos = []
        out: dict[str, dict] = {}
        for info in infos:
            if info.type != pafs.FileType.File or not info.path.startswith(base + "/"):
                continue
            tid, _, rest = info.path[len(base) + 1:].partition("/")
            entry = out.setdefault(tid, {"rounds": {}, "heartbeat": None, "failed": False, "spec": False})
            mtime = info.mtime_ns / 1e9 if info.mtime_ns is not None else None
            m = _ROUND_MANIFEST.fullmatch(rest)
            if m:
                entry["rounds"][int(m.group(1))] = mtime
            elif rest == "HEARTBEAT.json":
                entry["heartbeat"] = mtime
            elif rest == "FAILED.json":
                entry["failed"] = True
            elif rest == "spec.json":
                entry["spec"] = True
        return out

    def exists(self) -> bool:
        return self.fs.exists(self.dir)

    def trial_ids(self) -> list[str]:
        return [t for t in self.fs.listdir(self.path("trials")) if _SAFE_NAME.match(t)]

    def lineage(self, trial_id: str) -> "LineageStore":
        return LineageStore(self, trial_id)

    def pointers(self, trial_ids: Iterable[str], threads: int = 32) -> dict[str, dict]:
        """Each lineage's committed pointer (LineageStore.pointer), read `threads` at a time: one small
        read per lineage however many rounds it has."""
        from concurrent.futures import ThreadPoolExecutor
        tids = list(dict.fromkeys(trial_ids))
        with ThreadPoolExecutor(max(1, min(threads, len(tids)))) as pool:
            return dict(zip(tids, pool.map(lambda tid: self.lineage(tid).pointer(), tids)))

    def write_json(self, name: str, obj) -> None:
        self.fs.write(self.path(name), _dumps(obj))

    # The fusion self-checks' outcomes (workers/fusecheck.py), one file per key.
    FUSE_CHECKS = "fuse_checks"

    def fuse_check_name(self, digest: str) -> str:
        return f"{self.FUSE_CHECKS}/{check_name('fuse check', digest)}.json"

    def fuse_checks(self) -> list[dict]:
        """Every fusion self-check outcome this sweep has recorded."""
        try:
            names = sorted(self.fs.listdir(self.path(self.FUSE_CHECKS)))
        except (FileNotFoundError, NotADirectoryError, OSError):
            return []
        docs = [self.read_json(f"{self.FUSE_CHECKS}/{n}") for n in names if n.endswith(".json")]
        return [d for d in docs if isinstance(d, dict)]

    def read_json(self, name: str):
        try:
            return json.loads(self.fs.read(self.path(name)))
        except FileNotFoundError:
            return None
