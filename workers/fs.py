"""The filesystem under the store (workers/store.py): a local or NFS path and
`s3://bucket/prefix` through one pyarrow.fs code path (on S3 wrapped in the
bounded retries of workers/retry.py), the handful of operations the project
needs (`FS`: atomic writes, reads, listings, deletes, moves) and the
process-wide counts of them that a run records (RUN.json) and bench reports."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from typing import Optional

import pyarrow.fs as pafs

from workers.errors import StorageError

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
        # Endpoint, region and credentials: the standard AWS variables (AWS_ENDPOINT_URL: MinIO, moto, Ceph).
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
        # Retries: the SDK's per request, then ours per operation with a time budget (workers/retry.py),
        # so an outage of a minute or two costs time, not a trial; FS.fs stays a pyarrow FileSystem.
        from workers import retry
        # allow_delayed_open: an object written whole is one PutObject, not a 3-request multipart
        # upload (a round commit is mostly small files). background_writes=False: the retrying layer
        # PUTs a buffered object at close in the caller's thread, not on pyarrow's I/O pool, which
        # copy_files' own threads may be filling (apache/arrow#32372).
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


class FS:
    """The handful of operations the project needs, over pyarrow.fs."""

    # Operations by kind and bytes moved over every FS of this process: what a run cost (RUN.json,
    # bench --scale per round).
    _counts: dict = {}
    _counts_lock = __import__("threading").Lock()

    @classmethod
    def _count(cls, key: str, n: int = 1, written: int = 0, read: int = 0) -> None:
        with cls._counts_lock:
            for k, v in ((key, n), ("bytes_written", written), ("bytes_read", read)):
                if v:
                    cls._counts[k] = cls._counts.get(k, 0) + v

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
        return path if self.local else f"{self.uri.split('://', 1)[0]}://{path}"

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
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
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
        self._delete(self.fs.delete_dir, path)

    def delete_file(self, path: str) -> None:
        self._delete(self.fs.delete_file, path)

    def _delete(self, delete, path: str) -> None:
        self._count("delete")
        with contextlib.suppress(FileNotFoundError, OSError):
            delete(path)

    def move(self, src: str, dst: str) -> None:
        self._count("move")
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.copy_file(src, dst)
            self.fs.delete_file(src)
