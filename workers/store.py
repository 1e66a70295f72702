"""Storage layout and the atomic round commit.

Every path of a sweep is built here and nowhere else:

    <storage>/<sweep>/
        sweep.json                       the trial list of the last `run` (for `status`)
        trials/<trial_id>/spec.json      the full trial spec
        trials/<trial_id>/round_<k>/     weights.sparse.safetensors (the surviving weights
                                         and every unpruned tensor, workers/checkpoint.py;
                                         rounds committed before it: weights.safetensors,
                                         the dense state), mask.safetensors,
                                         [rewind.safetensors in round 0], metrics.json,
                                         predictions.safetensors (workers/predictions.py),
                                         MANIFEST.json (written last, atomically)
        trials/<trial_id>/partial/round_<k>/epoch_<e>/   rolling mid-round checkpoint
        trials/<trial_id>/HEARTBEAT.json / FAILED.json
        trials/<trial_id>/COMMITTED.json the committed prefix and its manifests' digests,
                                         written after each manifest (derived: a
                                         restart reads it instead of every manifest)
        results/  layers/                Parquet, derived from the manifests

A round exists only if its MANIFEST.json exists and verifies: the manifest
carries the sha256 of every file of the round and of itself, so a torn write,
a truncated file or a flipped bit is detected rather than trusted. Data files
are written first, the manifest last (big_vision's pattern); on a local/NFS
path the manifest lands by fsync + rename, on S3 a single PUT is atomic.

Everything goes through pyarrow.fs, so a local path and `s3://bucket/prefix`
share one code path (only the atomic write differs).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from typing import Iterable, Optional

import pyarrow.fs as pafs

# The storage errors live in workers/errors.py (workers/retry.py raises them too);
# callers import them from here.
from workers.errors import CorruptRound, StorageError, TakenOver  # noqa: F401

MANIFEST = "MANIFEST.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    """Sweep names and trial ids become path components: refuse anything that
    could escape the storage root (`..`, `/`, NUL, absolute paths)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise StorageError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' or '-' "
                           "(at most 128 characters, not starting with '.')")
    return name


def open_fs(uri: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, root path inside it, is_local) for a local path or URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)), True
    if uri.startswith("file://"):
        return pafs.LocalFileSystem(), os.path.abspath(uri[len("file://"):]), True
    if uri.startswith("s3://"):
        # Endpoint/region/credentials come from the standard AWS variables;
        # AWS_ENDPOINT_URL points at S3-compatible servers (MinIO, moto, Ceph).
        rest = uri[len("s3://"):].strip("/")
        kwargs = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs["endpoint_override"] = host or scheme
            kwargs["scheme"] = scheme if host else "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        # Retries, explicitly: the SDK's per request, then ours per operation
        # with a time budget (workers/retry.py): an outage of a minute or two
        # costs time, not a trial. FS.fs stays a real pyarrow FileSystem.
        from workers import retry
        # allow_delayed_open=True: an object written whole in one call is one PutObject,
        # not a multipart upload of 3 requests (create, part, complete): a round commit
        # is mostly small files, and each request is a round trip to S3.
        # background_writes=False: the retrying layer PUTs a whole buffered object
        # at close, in the caller's thread (no upload queued on pyarrow's I/O pool,
        # which copy_files' own threads may be filling: apache/arrow#32372).
        kwargs.update(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=retry.SDK_ATTEMPTS),
                      connect_timeout=retry.CONNECT_TIMEOUT_S, request_timeout=retry.REQUEST_TIMEOUT_S,
                      background_writes=False, allow_delayed_open=True)
        try:
            s3 = pafs.S3FileSystem(**kwargs)
        except Exception as e:  # never echo credentials: the message is pyarrow's
            raise StorageError(f"cannot open S3 storage {uri}: {type(e).__name__}") from None
        return retry.retrying(s3, f"s3://{rest}"), rest, False
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as e:
        raise StorageError(f"unsupported storage URI {uri!r}: {e}") from None
    return fs, path, False


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(body: dict) -> str:
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


class FS:
    """The handful of operations the project needs, over pyarrow.fs."""

    # Operations by kind (write, read, exists, listdir, delete, move) and bytes
    # moved, process-wide over every FS of this process: the driver records
    # what a run cost (RUN.json), bench --scale reports it per round.
    _counts: dict = {}
    _counts_lock = __import__("threading").Lock()

    @classmethod
    def _count(cls, op: str, written: int = 0, read: int = 0) -> None:
        with cls._counts_lock:
            c = cls._counts
            c[op] = c.get(op, 0) + 1
            if written:
                c["bytes_written"] = c.get("bytes_written", 0) + written
            if read:
                c["bytes_read"] = c.get("bytes_read", 0) + read

    @classmethod
    def _add(cls, key: str, n: int) -> None:
        with cls._counts_lock:
            cls._counts[key] = cls._counts.get(key, 0) + n

    @classmethod
    def counters(cls, since: Optional[dict] = None) -> dict:
        """{op: count, "bytes_written": n, "bytes_read": n} so far in this process,
        or since an earlier snapshot of this (zeros left out)."""
        with cls._counts_lock:
            now = dict(cls._counts)
        if since:
            now = {k: now.get(k, 0) - since.get(k, 0) for k in now}
        return {k: v for k, v in now.items() if v}

    def __init__(self, uri: str):
        self.fs, self.root, self.local = open_fs(uri)
        # Absolute for local paths: trial processes run in other directories.
        self.uri = self.root if self.local else uri

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/")] + [p.strip("/") for p in parts if p])

    def to_uri(self, path: str) -> str:
        if self.local:
            return path
        prefix = self.uri.split("://", 1)[0]
        return f"{prefix}://{path}"

    def write(self, path: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old or the new bytes."""
        parent = path.rsplit("/", 1)[0]
        self._count("write", written=len(data))
        if self.local:
            os.makedirs(parent, exist_ok=True)
            # A leading '.' hides a leftover of a killed write from readers of
            # the folder (pyarrow datasets and pandas.read_parquet skip such
            # names; check_name keeps real names from starting with '.').
            tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def sha256_of(self, path: str, chunk: int = 1 << 22) -> tuple[str, int]:
        """(sha256, bytes) of a file, read in chunks: memory stays flat for any size."""
        h, n = hashlib.sha256(), 0
        try:
            with self.fs.open_input_stream(path) as f:
                while True:
                    block = f.read(chunk)
                    if not block:
                        break
                    h.update(block)
                    n += len(block)
        finally:
            self._count("read", read=n)
        return h.hexdigest(), n

    def read(self, path: str) -> bytes:
        data = b""
        try:
            with self.fs.open_input_stream(path) as f:
                data = f.read()
        finally:
            self._count("read", read=len(data))
        return data

    def exists(self, path: str) -> bool:
        self._count("exists")
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def listdir(self, path: str) -> list[str]:
        """Base names directly under `path` ([] if it does not exist)."""
        self._count("listdir")
        sel = pafs.FileSelector(path, allow_not_found=True, recursive=False)
        try:
            infos = self.fs.get_file_info(sel)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(i.base_name for i in infos)

    def delete_dir(self, path: str) -> None:
        self._count("delete")
        try:
            self.fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass

    def delete_file(self, path: str) -> None:
        self._count("delete")
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    def move(self, src: str, dst: str) -> None:
        self._count("move")
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.copy_file(src, dst)
            self.fs.delete_file(src)


_ROUND_MANIFEST = re.compile(r"round_(\d+)/" + re.escape(MANIFEST))


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
        """One recursive listing of trials/: per trial id, {"rounds": {k: mtime_s}
        (rounds with a manifest file), "heartbeat": mtime_s, "failed": bool,
        "spec": bool}. On S3 that is a few paged LIST calls, not several per trial."""
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
        """Each lineage's committed pointer ({"prefix": k, "rounds": {round: manifest
        digest}}), read `threads` at a time: one small read per lineage however many
        rounds it has. A lineage without one (never started, or committed before
        pointers existed) is read from its manifests once, and its pointer written."""
        from concurrent.futures import ThreadPoolExecutor

        def one(tid: str) -> dict:
            lin = self.lineage(tid)
            p = lin.read_pointer()
            if p is None:
                manifests = lin.manifests()
                if manifests:
                    lin.sync_pointer(manifests)
                rounds = {j: m["manifest_sha256"] for j, m in manifests.items()}
                k = 0
                while k in rounds:
                    k += 1
                p = {"prefix": k, "rounds": rounds}
            return p
        tids = list(dict.fromkeys(trial_ids))
        if not tids:
            return {}
        with ThreadPoolExecutor(max(1, min(threads, len(tids)))) as pool:
            return dict(zip(tids, pool.map(one, tids)))

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


class LineageStore:
    """The storage of one trial's IMP lineage."""

    def __init__(self, sweep: SweepStore, trial_id: str):
        self.sweep = sweep
        self.fs = sweep.fs
        self.trial_id = check_name("trial", trial_id)
        self.dir = sweep.path("trials", trial_id)

    # --- paths -----------------------------------------------------------
    def round_dir(self, k: int) -> str:
        return f"{self.dir}/round_{k}"

    def round_uri(self, k: int) -> str:
        return self.fs.to_uri(self.round_dir(k))

    def partial_dir(self, k: int) -> str:
        return f"{self.dir}/partial/round_{k}"

    # --- evaluations after the lineage (workers/evaluations/) ----------
    def analysis_path(self, name: str) -> str:
        return f"{self.dir}/analysis/{check_name('analysis', name)}.json"

    def write_analysis(self, name: str, doc: dict) -> None:
        self.fs.write(self.analysis_path(name), _dumps(doc))

    def read_analysis(self, name: str) -> Optional[dict]:
        try:
            doc = json.loads(self.fs.read(self.analysis_path(name)))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return None  # torn or unreadable: computed again
        return doc if isinstance(doc, dict) else None

    def analyses(self) -> list[str]:
        names = self.fs.listdir(f"{self.dir}/analysis")
        return sorted(n[:-5] for n in names if n.endswith(".json") and ".tmp-" not in n and not n.startswith("."))

    # --- spec / markers -------------------------------------------------
    def write_spec(self, spec_dict: dict, replace: bool = False) -> None:
        path = f"{self.dir}/spec.json"
        if replace or not self.fs.exists(path):
            self.fs.write(path, _dumps(spec_dict))

    def read_spec(self) -> Optional[dict]:
        try:
            doc = json.loads(self.fs.read(f"{self.dir}/spec.json"))
        except (FileNotFoundError, OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def claim(self, info: dict) -> str:
        """Make this attempt the lineage's owner; returns its token.

        When Tune restarts a trial elsewhere (a lost node, a retried actor),
        the old attempt may still be alive for a moment. Every commit first
        checks the token (`check_owner`), so the stale attempt stops instead of
        committing the same round a second time.
        """
        token = uuid.uuid4().hex
        self.write_marker("OWNER.json", {**info, "token": token, "time": time.time()})
        return token

    def check_owner(self, token: Optional[str]) -> None:
        if token is None:
            return
        owner = self.read_marker("OWNER.json")
        if owner is not None and owner.get("token") != token:
            raise TakenOver(f"trial {self.trial_id} was taken over by a newer attempt "
                            f"(node {owner.get('node')}); this attempt stops without committing")

    def heartbeat(self, info: dict) -> None:
        self.fs.write(f"{self.dir}/HEARTBEAT.json", _dumps({**info, "time": time.time()}))

    def read_marker(self, name: str) -> Optional[dict]:
        try:
            return json.loads(self.fs.read(f"{self.dir}/{name}"))
        except (FileNotFoundError, OSError, ValueError):
            return None

    def write_marker(self, name: str, info: dict) -> None:
        self.fs.write(f"{self.dir}/{name}", _dumps(info))

    FAILED = "FAILED.json"

    def mark_failed(self, error: str, **context) -> None:
        """The lineage's FAILED marker (what `status` counts as failed): the one-line
        cause and where it came from; a new attempt clears it."""
        self.write_marker(self.FAILED, {"time": time.time(), "error": error, **context})

    def clear_marker(self, name: str) -> None:
        self.fs.delete_file(f"{self.dir}/{name}")

    # --- rounds ----------------------------------------------------------
    def commit_round(self, k: int, files: dict[str, bytes], metrics: dict, spec: dict) -> dict:
        """Write the round's files, then its manifest last. Returns the manifest."""
        d = self.round_dir(k)
        # A stale manifest from an invalidated attempt must not vouch for new files.
        self.fs.delete_file(f"{d}/{MANIFEST}")
        for name, data in files.items():
            self.fs.write(f"{d}/{name}", data)
        body = {
            "trial_id": self.trial_id,
            "round": k,
            "metrics": metrics,
            "spec": spec,
            "files": {n: {"sha256": sha256(b), "bytes": len(b)} for n, b in files.items()},
            "committed_at": time.time(),
        }
        manifest = {**body, "manifest_sha256": _manifest_digest(body)}
        self.fs.write(f"{d}/{MANIFEST}", _dumps(manifest))
        self._point(k, manifest["manifest_sha256"])
        return manifest

    # --- the committed pointer (derived from the manifests) --------------
    # A restart needs each lineage's committed prefix. Reading every manifest is
    # rounds x lineages sequential requests (about 220,000 at the paper's whole
    # grid on S3); the pointer is one small object per lineage, written after
    # each manifest. A manifest always wins: the lineage that resumes reads its
    # manifests and rewrites a pointer that disagrees (sync_pointer), and
    # `verify` checks both. A kill between the manifest and the pointer leaves
    # the pointer one round behind: the lineage is resumed, finds the round
    # committed and moves on.
    POINTER = "COMMITTED.json"

    def read_pointer(self) -> Optional[dict]:
        """{"prefix": k, "rounds": {round: manifest_sha256}}, or None (absent, torn, or
        a sweep written before pointers)."""
        doc = self.read_marker(self.POINTER)
        if (not isinstance(doc, dict) or not isinstance(doc.get("prefix"), int)
                or not isinstance(doc.get("rounds"), dict)):
            return None
        try:
            doc["rounds"] = {int(j): str(d) for j, d in doc["rounds"].items()}
        except (TypeError, ValueError):
            return None
        return doc

    def _write_pointer(self, rounds: dict[int, str]) -> None:
        k = 0
        while k in rounds:
            k += 1
        self.write_marker(self.POINTER, {"prefix": k, "rounds": {str(j): d for j, d in sorted(rounds.items())}})

    def _point(self, k: int, digest: str) -> None:
        """Round k was just committed: the pointer keeps the rounds before it, adds k."""
        p = self.read_pointer()
        rounds = {j: d for j, d in (p["rounds"] if p else {}).items() if j < k}
        if set(range(k)) - rounds.keys():  # no pointer yet (an older sweep), or one left behind by a kill
            rounds = {j: m["manifest_sha256"] for j, m in self.manifests().items() if j < k}
        self._write_pointer({**rounds, k: digest})

    def sync_pointer(self, manifests: Optional[dict[int, dict]] = None) -> None:
        """Make the pointer say what the manifests say (written only if it does not)."""
        manifests = self.manifests() if manifests is None else manifests
        rounds = {j: m["manifest_sha256"] for j, m in manifests.items()}
        p = self.read_pointer()
        if p is None or p["rounds"] != rounds:
            self._write_pointer(rounds)

    def read_manifest(self, k: int) -> Optional[dict]:
        """The round's manifest if it is present and intact, else None."""
        try:
            raw = self.fs.read(f"{self.round_dir(k)}/{MANIFEST}")
        except (FileNotFoundError, OSError):
            return None
        return _parse_manifest(raw)

    def manifests(self) -> dict[int, dict]:
        """Every intact committed round of this trial: {round: manifest}."""
        rounds = [int(m.group(1)) for m in (re.fullmatch(r"round_(\d+)", n) for n in self.fs.listdir(self.dir)) if m]
        return self.read_manifests(rounds)

    READ_THREADS = 16  # an object store answers each read in tens of ms: a lineage's rounds at once

    def read_manifests(self, rounds: Iterable[int]) -> dict[int, dict]:
        """{round: manifest} of the given rounds that are committed and intact, read
        concurrently on an object store (17 sequential reads cost a resumed lineage,
        and the driver appending its first round, a second or more behind 20 ms)."""
        rounds = sorted(set(rounds))
        if self.fs.local or len(rounds) < 2:
            got = [self.read_manifest(k) for k in rounds]
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(min(self.READ_THREADS, len(rounds))) as pool:
                got = list(pool.map(self.read_manifest, rounds))
        return {k: man for k, man in zip(rounds, got) if man is not None and man.get("round") == k}

    def committed_prefix(self) -> int:
        """Number of rounds committed contiguously from round 0."""
        done = self.manifests()
        k = 0
        while k in done:
            k += 1
        return k

    def load_round(self, k: int, names: Iterable[str]) -> dict[str, bytes]:
        """Read files of a committed round, verifying each against the manifest."""
        man = self.read_manifest(k)
        if man is None:
            raise CorruptRound(f"round {k} of trial {self.trial_id} has no intact manifest")
        out = {}
        for name in names:
            want = man["files"].get(name)
            if want is None:
                raise CorruptRound(f"round {k} of trial {self.trial_id}: {name} is not in its manifest")
            try:
                data = self.fs.read(f"{self.round_dir(k)}/{name}")
            except (FileNotFoundError, OSError):
                raise CorruptRound(f"round {k} of trial {self.trial_id}: {name} is missing") from None
            if sha256(data) != want["sha256"]:
                raise CorruptRound(f"round {k} of trial {self.trial_id}: {name} fails its sha256 check")
            out[name] = data
        return out

    def read_predictions(self, k: int) -> Optional[dict]:
        """Committed round k's per-image predictions ({val,test}_{pred,label}:
        numpy arrays), verified against its manifest; None for a round
        committed before rounds recorded them. Raises CorruptRound like load_round."""
        from workers import predictions
        man = self.read_manifest(k)
        if man is not None and predictions.FILE not in man["files"]:
            return None
        return predictions.decode(self.load_round(k, [predictions.FILE])[predictions.FILE])

    def verify_round(self, k: int) -> tuple[int, list[tuple[str, str]]]:
        """Re-check committed round k against its manifest, streaming each file:
        (files checked, the manifest included; [(file, problem)], empty when
        everything verifies)."""
        try:
            raw = self.fs.read(f"{self.round_dir(k)}/{MANIFEST}")
        except (FileNotFoundError, OSError):
            return 1, [(MANIFEST, "missing")]
        man = _parse_manifest(raw)
        if man is None or man.get("round") != k:
            return 1, [(MANIFEST, "fails its own sha256 check (torn or edited)")]
        problems = []
        for name, want in sorted(man["files"].items()):
            try:
                digest, size = self.fs.sha256_of(f"{self.round_dir(k)}/{name}")
            except (FileNotFoundError, OSError):
                problems.append((name, "missing"))
                continue
            if size != want.get("bytes", size):
                problems.append((name, f"{size} bytes, the manifest says {want['bytes']}"))
            elif digest != want["sha256"]:
                problems.append((name, "fails its sha256 check"))
        return 1 + len(man["files"]), problems

    def invalidate_from(self, k: int) -> list[int]:
        """Un-commit round k and every later round (they were derived from it).

        The manifests are renamed, not deleted, so what happened stays visible.
        """
        gone = []
        for j in sorted(self.manifests_any()):
            if j >= k:
                src = f"{self.round_dir(j)}/{MANIFEST}"
                self.fs.move(src, f"{self.round_dir(j)}/MANIFEST.invalid-{int(time.time())}.json")
                gone.append(j)
        self.sync_pointer()
        return gone

    def manifests_any(self) -> list[int]:
        """Rounds that have a manifest file at all (intact or not)."""
        out = []
        for name in self.fs.listdir(self.dir):
            m = re.fullmatch(r"round_(\d+)", name)
            if m and self.fs.exists(f"{self.round_dir(int(m.group(1)))}/{MANIFEST}"):
                out.append(int(m.group(1)))
        return out

    # --- rolling mid-round checkpoint -------------------------------------
    def save_partial(self, k: int, epoch: int, files: dict[str, bytes], meta: dict) -> None:
        d = f"{self.partial_dir(k)}/epoch_{epoch}"
        for name, data in files.items():
            self.fs.write(f"{d}/{name}", data)
        body = {"round": k, "epoch": epoch, "meta": meta,
                "files": {n: {"sha256": sha256(b), "bytes": len(b)} for n, b in files.items()}}
        self.fs.write(f"{d}/{MANIFEST}", _dumps({**body, "manifest_sha256": _manifest_digest(body)}))
        # Only the newest checkpoint is kept: older ones are now redundant.
        for name in self.fs.listdir(self.partial_dir(k)):
            if name != f"epoch_{epoch}":
                self.fs.delete_dir(f"{self.partial_dir(k)}/{name}")

    def load_partial(self, k: int) -> Optional[tuple[int, dict[str, bytes], dict]]:
        """Newest intact mid-round checkpoint of round k: (epoch, files, meta)."""
        names = self.fs.listdir(self.partial_dir(k))
        epochs = sorted((int(n.split("_")[1]) for n in names if re.fullmatch(r"epoch_\d+", n)), reverse=True)
        for e in epochs:
            d = f"{self.partial_dir(k)}/epoch_{e}"
            try:
                man = _parse_manifest(self.fs.read(f"{d}/{MANIFEST}"))
                if man is None:
                    continue
                files = {}
                for name, want in man["files"].items():
                    data = self.fs.read(f"{d}/{name}")
                    if sha256(data) != want["sha256"]:
                        raise CorruptRound(name)
                    files[name] = data
                return e, files, man["meta"]
            except (FileNotFoundError, OSError, CorruptRound, KeyError):
                continue
        return None

    def clear_partial(self, k: int) -> None:
        self.fs.delete_dir(self.partial_dir(k))

    def clear_partials_before(self, k: int) -> None:
        """Drop mid-round checkpoints of rounds already committed (a kill
        between a round's commit and its checkpoint's removal leaves one)."""
        for name in self.fs.listdir(f"{self.dir}/partial"):
            m = re.fullmatch(r"round_(\d+)", name)
            if m and int(m.group(1)) < k:
                self.clear_partial(int(m.group(1)))


def _parse_manifest(raw: bytes) -> Optional[dict]:
    try:
        man = json.loads(raw)
        digest = man.pop("manifest_sha256")
    except (ValueError, KeyError, AttributeError, TypeError):
        return None
    if _manifest_digest(man) != digest:
        return None
    man["manifest_sha256"] = digest
    return man


def _dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, indent=1, default=str).encode()
