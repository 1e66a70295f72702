"""What Ray Tune itself writes to the sweep's storage, counted with ours.

Tune keeps its experiment state (every trial's status, the searcher's state)
under `<sweep>/_tune/` on the storage it is given and uploads it whole every
so often; that object grows with the sweep. The driver's storage cost per
round (RUN.json `tune_storage`, `bench --scale`) must include it, so Tune gets
the sweep's filesystem through this thin counting layer: every call goes to
the real filesystem unchanged (S3's retrying one included) and is counted in
FS's process-wide counters as `tune_<op>` and `tune_bytes_written`.
"""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.fs as pafs

from workers.retry import DelegatingHandler
from workers.store import FS


class _CountingWriter(io.RawIOBase):
    def __init__(self, inner):
        super().__init__()
        self._inner, self._n = inner, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._inner.write(b)
        self._n += len(b)
        return len(b)

    def tell(self) -> int:
        return self._n

    def flush(self) -> None:
        if not self._inner.closed:  # io's close() flushes once more, after ours
            self._inner.flush()

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                FS._count("tune_write")
                FS._count("tune_bytes_written", self._n)
                super().close()


class CountingHandler(DelegatingHandler):
    """Delegates every call to `fs`, counting it (see the module's doc)."""

    def _call(self, op: str, what: str, fn):
        if op != "write":  # a write is counted when its stream closes, with its bytes
            FS._count(f"tune_{op}")
        return fn()

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_CountingWriter(self.fs.open_output_stream(path, metadata=metadata)), mode="w")


def counted(fs: pafs.FileSystem) -> pafs.FileSystem:
    return pafs.PyFileSystem(CountingHandler(fs))
