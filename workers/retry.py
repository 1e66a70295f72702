"""Bounded retries of remote storage calls (S3 and S3-compatible object stores).

Two layers:

- The AWS SDK's own: pyarrow's S3FileSystem is built with an explicit
  `AwsStandardS3RetryStrategy` (SDK_ATTEMPTS attempts of each HTTP request,
  with the SDK's exponential backoff) and explicit connect/request timeouts.
  That rides out a single 503 or a reset connection in well under a second.
- Ours, around every filesystem operation: `RetryingHandler` wraps the
  S3FileSystem in a `pyarrow.fs.PyFileSystem`, so what the project hands to
  pyarrow.dataset, pyarrow.parquet and Ray Tune (`FS.fs`) is still a real
  pyarrow FileSystem, and every call through it (FS's methods, the Parquet
  readers, Tune's own state) retries a transient failure (503 SlowDown, a
  refused/reset/dropped connection, a timeout) with exponential backoff and
  jitter, for at most a time budget (LTH_S3_RETRY_BUDGET_S, default 120 s),
  so an outage of a minute or two costs time, not a trial.

What makes a retry safe: every write is a whole-object PUT, replayed from
the same bytes (a PUT is atomic on S3, so a retried one either lands whole
or not at all, and landing twice is landing once); a read is retried as a
whole (FS.read returns every byte of one object or fails) or, for a chunked
read, from its offset in an object whose size must not have changed. Missing
objects, denied access and other non-transient errors are not retried.

Past the budget the operation raises StorageUnavailable: a StorageError
(the CLI prints it as one line) and deliberately *not* an OSError, so code
that reads "an unreadable manifest" as "no round" (except OSError: None)
does not take an outage for a missing round and train it a second time; the
trial fails with that one line, and re-running the same command resumes
from the committed manifests.
"""
from __future__ import annotations

import io
import os
import random
import re
import time
from typing import Callable, Optional, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from workers.errors import StorageError

T = TypeVar("T")

BUDGET_ENV = "LTH_S3_RETRY_BUDGET_S"
DEFAULT_BUDGET_S = 120.0
SDK_ATTEMPTS = 3            # AwsStandardS3RetryStrategy(max_attempts=...): per HTTP request
CONNECT_TIMEOUT_S = 10.0    # the SDK's connect timeout
REQUEST_TIMEOUT_S = 60.0    # the SDK's request (socket read) timeout where pyarrow honours it
BACKOFF_FIRST_S = 0.5       # first pause; doubled each retry ...
BACKOFF_MAX_S = 10.0        # ... up to this; each pause is drawn in [half, all] of it (jitter)


class StorageUnavailable(StorageError):
    """Remote storage kept failing with transient errors for the whole retry budget."""


# What pyarrow's S3 errors say for a failure worth retrying (an AWS error name,
# an HTTP 5xx or 429, or a curl/socket-level failure). Anything else (a
# missing key, AccessDenied, NoSuchBucket, a bad request) is not retried.
_TRANSIENT = re.compile(
    r"SLOW_DOWN|SlowDown|SERVICE_UNAVAILABLE|ServiceUnavailable|THROTTL|Throttl|TooManyRequests"
    r"|INTERNAL_FAILURE|InternalError|REQUEST_TIMEOUT|RequestTimeout|NETWORK_CONNECTION"
    # A multipart upload whose completion was answered but the answer lost, then
    # completed again: the whole write is redone (a new upload of the same bytes).
    r"|NO_SUCH_UPLOAD|NoSuchUpload"
    r"|HTTP (?:status|response) code:? ?(?:5\d\d|429)|HTTP status 5\d\d|status code (?:5\d\d|429)"
    r"|curlCode|[Cc]ouldn'?t connect|[Cc]onnection (?:refused|reset|aborted|closed|died)"
    r"|Empty reply|[Bb]roken pipe|[Tt]imed? ?out|[Tt]imeout|Recv failure|Send failure"
    r"|[Uu]nable to connect|[Nn]etwork error|[Ee]nd of file|[Uu]nexpected EOF|Failure when receiving"
    r"|transfer closed|Partial file|UNKNOWN \(HTTP status (?:5\d\d|429|0)\)|HTTP status 0\b")


def is_transient(e: BaseException) -> bool:
    """Whether a storage error is worth retrying (a failure of the service or
    the network, not of the request)."""
    if isinstance(e, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                      PermissionError)):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if isinstance(e, (OSError, pa.ArrowException)):
        return bool(_TRANSIENT.search(str(e)))
    return False


def budget_s() -> float:
    raw = os.environ.get(BUDGET_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{BUDGET_ENV}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise StorageError(f"{BUDGET_ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def backoff_s(retry: int) -> float:
    """The pause before retry number `retry` (0-based): exponential, capped, jittered."""
    full = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** retry))
    return random.uniform(full / 2, full)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _cause(e: BaseException) -> str:
    """pyarrow's message from its "AWS Error ..." on (the key is in ours already)."""
    text = first_line(e)
    at = text.find("AWS Error ")
    return text[at:] if at >= 0 else text


class Retrier:
    """Call an operation again on a transient error, within one time budget per call."""

    def __init__(self, where: str, budget: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.where, self.budget, self.sleep, self.clock = where, budget, sleep, clock

    def __call__(self, what: str, fn: Callable[[], T]) -> T:
        start = self.clock()
        deadline = start + self.budget
        retry = 0
        while True:
            try:
                return fn()
            except BaseException as e:
                if not is_transient(e):
                    raise
                now = self.clock()
                if now >= deadline:
                    raise StorageUnavailable(
                        f"storage {self.where} unavailable: {what} failed {retry + 1} time(s) in "
                        f"{now - start:.0f}s (retry budget {self.budget:g}s, {BUDGET_ENV}): "
                        f"{_cause(e)}; re-run the same command to resume") from None
                self.sleep(min(backoff_s(retry), max(0.0, deadline - now)))
                retry += 1


class _Reader(io.RawIOBase):
    """A read-only file over one object whose every read is retried: a read that
    fails is repeated from the same offset on a freshly opened file (a ranged
    GET), and an object whose size changed in between is an error, not a mix
    of two versions."""

    def __init__(self, retry: Retrier, fs: pafs.FileSystem, path: str):
        super().__init__()
        self._retry, self._fs, self._path = retry, fs, path
        self._f = retry(f"opening {path}", lambda: fs.open_input_file(path))
        self._size = self._f.size()
        self._pos = 0

    def _attempt(self, op):
        def once():
            if self._f is None:
                f = self._fs.open_input_file(self._path)
                if f.size() != self._size:
                    f.close()
                    raise OSError(f"{self._path} changed while it was being read "
                                  f"({self._size} bytes, now {f.size()})")
                self._f = f
            try:
                self._f.seek(self._pos)
                return op(self._f)
            except BaseException:
                f, self._f = self._f, None
                try:
                    f.close()
                except Exception:
                    pass
                raise
        return self._retry(f"reading {self._path}", once)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self._pos)
        data = self._attempt(lambda f: f.read(n)) if n else b""
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except Exception:
                pass
            self._f = None
        super().close()


class _Writer(io.RawIOBase):
    """A write-only file whose bytes are PUT as one object on close, the PUT
    retried from the same bytes (a whole-object PUT is atomic and idempotent)."""

    def __init__(self, retry: Retrier, fs: pafs.FileSystem, path: str, metadata):
        super().__init__()
        self._retry, self._fs, self._path, self._metadata = retry, fs, path, metadata
        self._buf = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        return self._buf.write(b)

    def tell(self) -> int:
        return self._buf.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        data = self._buf.getvalue()

        def put():
            with self._fs.open_output_stream(self._path, metadata=self._metadata) as f:
                f.write(data)
        try:
            self._retry(f"writing {self._path}", put)
        finally:
            self._buf = io.BytesIO()
            super().close()


class DelegatingHandler(pafs.FileSystemHandler):
    """A pyarrow FileSystemHandler that hands every call to a real filesystem
    through one hook, `_call(op, what, fn)` (here: just `fn()`); subclasses
    retry (RetryingHandler) or count (orchestrator/tune/counted.py) there.
    `pafs.PyFileSystem(handler)` is a pyarrow FileSystem like any other:
    pyarrow.dataset, pyarrow.parquet and Ray Tune take it as is."""

    def __init__(self, fs: pafs.FileSystem):
        self.fs = fs

    def _call(self, op: str, what: str, fn: Callable[[], T]) -> T:
        return fn()

    def __reduce__(self):  # Ray pickles the filesystem into its trial processes
        return (type(self), (self.fs,))

    def __eq__(self, other):
        return type(other) is type(self) and self.fs.equals(other.fs)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return f"{type(self).__name__}-{self.fs.type_name}"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def equals(self, other):
        return self == other

    def get_file_info(self, paths):
        return self._call("info", f"reading information of "
                                  f"{paths[0] if len(paths) == 1 else f'{len(paths)} paths'}",
                          lambda: self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector):
        return self._call("listdir", f"listing {selector.base_dir}", lambda: self.fs.get_file_info(selector))

    def create_dir(self, path, recursive):
        self._call("mkdir", f"creating {path}", lambda: self.fs.create_dir(path, recursive=recursive))

    def delete_dir(self, path):
        self._call("delete", f"deleting {path}", lambda: self.fs.delete_dir(path))

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._call("delete", f"deleting the contents of {path}",
                   lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self):
        self._call("delete", "deleting the root's contents",
                   lambda: self.fs.delete_dir_contents("/", accept_root_dir=True))

    def delete_file(self, path):
        self._call("delete", f"deleting {path}", lambda: self.fs.delete_file(path))

    def move(self, src, dest):
        self._call("move", f"moving {src}", lambda: self.fs.move(src, dest))

    def copy_file(self, src, dest):
        self._call("copy", f"copying {src}", lambda: self.fs.copy_file(src, dest))

    def open_input_stream(self, path):
        return self._call("read", f"opening {path}", lambda: self.fs.open_input_stream(path))

    def open_input_file(self, path):
        return self._call("read", f"opening {path}", lambda: self.fs.open_input_file(path))

    def open_output_stream(self, path, metadata):
        return self._call("write", f"writing {path}", lambda: self.fs.open_output_stream(path, metadata=metadata))

    def open_append_stream(self, path, metadata):
        return self._call("write", f"appending to {path}",
                          lambda: self.fs.open_append_stream(path, metadata=metadata))


class RetryingHandler(DelegatingHandler):
    """Retries the transient failures of a real filesystem (an S3FileSystem; see
    the module's doc): every call within one time budget, streams by the whole
    object (_Reader, _Writer)."""

    def __init__(self, fs: pafs.FileSystem, where: str, budget: Optional[float] = None):
        super().__init__(fs)
        self.where = where
        self.budget = budget_s() if budget is None else budget
        self.retry = Retrier(where, self.budget)

    def __reduce__(self):
        return (RetryingHandler, (self.fs, self.where, self.budget))

    def get_type_name(self):
        return f"retrying-{self.fs.type_name}"

    def _call(self, op: str, what: str, fn: Callable[[], T]) -> T:
        return self.retry(what, fn)

    def open_input_stream(self, path):
        return pa.PythonFile(_Reader(self.retry, self.fs, path), mode="r")

    def open_input_file(self, path):
        return pa.PythonFile(_Reader(self.retry, self.fs, path), mode="r")

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_Writer(self.retry, self.fs, path, metadata), mode="w")

    def open_append_stream(self, path, metadata):
        # S3 has no appends (pyarrow refuses them too); delegate for the error.
        return self.fs.open_append_stream(path, metadata=metadata)


def retrying(fs: pafs.FileSystem, where: str) -> pafs.FileSystem:
    """`fs` (a remote pyarrow filesystem) with bounded retries of every operation."""
    return pafs.PyFileSystem(RetryingHandler(fs, where))
