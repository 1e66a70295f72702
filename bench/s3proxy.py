"""A fault-injecting, latency-adding HTTP proxy on loopback, in front of an S3 server (moto).

Used by the S3 fault tests (tests/integration/test_s3_faults.py) and by
`bench --restart-scale`, which gives every request a fixed latency (like S3
from a cluster) and counts requests by method (`proxy.counts()`): requests on
the wire, not library calls.

It runs as threads of the test process, so a test arms faults directly:

    proxy = FaultProxy(upstream_port)                 # listens on 127.0.0.1:<proxy.port>
    proxy.add(Fault("slowdown", match=puts("weights"), times=6))
    proxy.add(Fault("outage", match=puts("/round_1/MANIFEST.json"), seconds=30))

Faults, the first armed one whose `match(method, path)` accepts a request fires:

- "slowdown": answer `503 SlowDown` with S3's XML error body (not forwarded);
- "drop_request": read the request, close the connection without forwarding;
- "drop_response": forward the request (a PUT lands), then close without answering;
- "truncate_response": forward it, send half of the answer, close;
- "outage": from this request on, for `seconds`, every connection is reset
  (accepted and closed with RST: the client sees a reset/empty reply).

Every request is logged (`proxy.log`): method, path, the fault or the
upstream status, and for a PUT the sha256 of its payload (aws-chunked
framing removed), so a test can tell a retried PUT of the same bytes from a
second, different write of the same object.

One request per connection: the proxy asks the upstream for `Connection:
close` and tells the client the same, so request boundaries need no parsing
of the answers.
"""
from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b'<Message>Please reduce your request rate.</Message>'
                 b'<RequestId>%s</RequestId><HostId>fault-proxy</HostId></Error>')


def puts(fragment: str, *, exclude: str = "/partial/") -> Callable[[str, str], bool]:
    """A matcher: PUTs whose path contains `fragment` (not under `exclude`)."""
    return lambda method, path: method == "PUT" and fragment in path and not (exclude and exclude in path)


def one_object(match: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
    """`match`, narrowed to the first object it matches: with trials writing at the
    same moment, a burst of faults then lands on one upload, not a few on each."""
    chosen: list[str] = []

    def narrowed(method: str, path: str) -> bool:
        if not match(method, path):
            return False
        key = path.split("?")[0]
        if not chosen:
            chosen.append(key)
        return key == chosen[0]
    return narrowed


def requests(fragment: str = "", method: Optional[str] = None) -> Callable[[str, str], bool]:
    return lambda m, path: (method is None or m == method) and fragment in path


@dataclass
class Fault:
    action: str
    match: Callable[[str, str], bool]
    times: int = 1
    seconds: float = 0.0
    fired: list = field(default_factory=list)   # (monotonic time, method, path) of each request it hit


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", latency_s: float = 0.0,
                 keep_log: bool = True):
        """`latency_s`: added to every request before it is forwarded; `keep_log`:
        False keeps only the counts (a bench sends hundreds of thousands)."""
        self.upstream = (upstream_host, upstream_port)
        self.latency_s, self.keep_log = latency_s, keep_log
        self._counts: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.log: list[dict] = []
        self.outages: list[tuple[float, float]] = []   # (start, end), monotonic
        self._outage_until = 0.0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._serve, name="fault-proxy", daemon=True).start()

    # --- control, from the test ----------------------------------------------
    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def outage(self, seconds: float) -> None:
        with self._lock:
            self._start_outage(seconds)

    def in_outage(self) -> bool:
        return time.monotonic() < self._outage_until

    def wait_outages_over(self) -> None:
        while self.in_outage():
            time.sleep(0.2)

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def counts(self) -> dict[str, int]:
        """Requests received so far, by HTTP method."""
        with self._lock:
            return dict(self._counts)

    def entries(self, method: Optional[str] = None, fragment: str = "") -> list[dict]:
        with self._lock:
            return [e for e in self.log if (method is None or e["method"] == method) and fragment in e["path"]]

    # --- the proxy ---------------------------------------------------------------
    def _start_outage(self, seconds: float) -> None:
        now = time.monotonic()
        self._outage_until = max(self._outage_until, now + seconds)
        self.outages.append((now, now + seconds))

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self.in_outage():
                _reset(conn)
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        try:
            req = _read_request(conn)
            if req is None:
                conn.close()
                return
            method, path, headers, raw_body, payload = req
            entry = {"t": time.monotonic(), "method": method, "path": path, "fault": None, "status": None,
                     "sha256": hashlib.sha256(payload).hexdigest() if method == "PUT" else None}
            with self._lock:
                self._counts[method] = self._counts.get(method, 0) + 1
                if self.keep_log:
                    self.log.append(entry)
                fault = None
                if time.monotonic() < self._outage_until:
                    fault = "outage"
                else:
                    for f in self.faults:
                        if f.times > 0 and f.match(method, path):
                            f.times -= 1
                            f.fired.append((time.monotonic(), method, path))
                            fault = f.action
                            if f.action == "outage":
                                self._start_outage(f.seconds)
                            break
                entry["fault"] = fault
            if fault in ("outage", "drop_request"):
                _reset(conn)
                return
            if fault == "slowdown":
                body = SLOWDOWN_BODY % uuid.uuid4().hex.encode()
                head = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
                conn.sendall(head + (b"" if method == "HEAD" else body))
                _close(conn)
                return
            if self.latency_s:
                time.sleep(self.latency_s)
            response = self._forward(method, path, headers, raw_body)
            entry["status"] = _status(response)
            if fault == "drop_response":
                _reset(conn)
                return
            if fault == "truncate_response":
                conn.sendall(response[:max(1, len(response) // 2)])
                _reset(conn)
                return
            conn.sendall(response)
            _close(conn)
        except OSError:
            _reset(conn)

    def _forward(self, method: str, path: str, headers: list[tuple[str, str]], raw_body: bytes) -> bytes:
        out = [f"{method} {path} HTTP/1.1"]
        out += [f"{k}: {v}" for k, v in headers if k.lower() not in ("connection", "expect", "keep-alive")]
        out.append("Connection: close")
        with socket.create_connection(self.upstream, timeout=60) as up:
            up.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + raw_body)
            chunks = []
            while True:
                b = up.recv(1 << 16)
                if not b:
                    break
                chunks.append(b)
        response = b"".join(chunks)
        head, sep, body = response.partition(b"\r\n\r\n")
        lines = [l for l in head.split(b"\r\n") if not l.lower().startswith((b"connection:", b"keep-alive:"))]
        return b"\r\n".join(lines + [b"Connection: close"]) + sep + body


def _status(response: bytes) -> Optional[int]:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(2)
        while conn.recv(1 << 16):  # let the client read everything before the close
            pass
    except OSError:
        pass
    conn.close()


def _reset(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


def _read_request(conn: socket.socket):
    """(method, path, headers, raw body, payload) of one request; None at EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = conn.recv(1 << 16)
        if not b:
            return None
        buf += b
        if len(buf) > 1 << 20:
            raise OSError("request head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = [tuple(s.strip() for s in l.split(":", 1)) for l in lines[1:] if ":" in l]
    h = {k.lower(): v for k, v in headers}
    if h.get("expect", "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    reader = _Buffered(conn, rest)
    if "chunked" in h.get("transfer-encoding", "").lower():
        raw = reader.chunked()
        body_for_payload = _dechunk(raw)
    else:
        raw = reader.exactly(int(h.get("content-length", "0") or 0))
        body_for_payload = raw
    payload = _dechunk(body_for_payload) if "aws-chunked" in h.get("content-encoding", "").lower() else body_for_payload
    return method, path, headers, raw, payload


class _Buffered:
    def __init__(self, conn, data: bytes):
        self.conn, self.data = conn, data

    def _fill(self, n: int) -> None:
        while len(self.data) < n:
            b = self.conn.recv(1 << 16)
            if not b:
                raise OSError("client closed mid-request")
            self.data += b

    def exactly(self, n: int) -> bytes:
        self._fill(n)
        out, self.data = self.data[:n], self.data[n:]
        return out

    def line(self) -> bytes:
        while b"\r\n" not in self.data:
            self._fill(len(self.data) + 1)
        out, _, self.data = self.data.partition(b"\r\n")
        return out + b"\r\n"

    def chunked(self) -> bytes:
        """The raw bytes of a chunked body, through its trailers."""
        raw = b""
        while True:
            line = self.line()
            raw += line
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:
                    trailer = self.line()
                    raw += trailer
                    if trailer == b"\r\n":
                        return raw
            raw += self.exactly(size + 2)


def _dechunk(raw: bytes) -> bytes:
    """The payload of a chunked (or aws-chunked) body."""
    out, i = [], 0
    while i < len(raw):
        j = raw.find(b"\r\n", i)
        if j < 0:
            break
        size = int(raw[i:j].split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        out.append(raw[j + 2:j + 2 + size])
        i = j + 2 + size + 2
    return b"".join(out)
