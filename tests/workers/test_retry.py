"""workers/retry.py without a network: what is retried, for how long, and what
reaches the user past the budget (the S3 side: tests/integration/test_s3_faults.py)."""
import pickle

import pyarrow.fs as pafs
import pytest

from workers import retry
from workers.store import StorageError

SLOWDOWN = OSError("When uploading part for key 'a/b' in bucket 'x': AWS Error SLOW_DOWN during UploadPart "
                   "operation: Please reduce your request rate.")
HEAD_503 = OSError("When reading information for key 'a' in bucket 'x': AWS Error UNKNOWN (HTTP status 503) "
                   "during HeadObject operation: No response body.")
RESET = OSError("When listing objects under key 'a/' in bucket 'x': AWS Error NETWORK_CONNECTION during "
                "ListObjectsV2 operation: curlCode: 56, Failure when receiving data from the peer; Details: "
                "Recv failure: Connection reset by peer")
REFUSED = OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect to "
                  "server; Details: Failed to connect to 127.0.0.1 port 1 after 0 ms: Could not connect to server")


@pytest.mark.parametrize("e", [SLOWDOWN, HEAD_503, RESET, REFUSED, ConnectionResetError(), TimeoutError()])
def test_transient_errors_are_retried(e):
    assert retry.is_transient(e)


@pytest.mark.parametrize("e", [
    FileNotFoundError("Path does not exist 'x/a'"),
    PermissionError("denied"),
    OSError("When getting information for key 'a' in bucket 'x': AWS Error ACCESS_DENIED during HeadObject "
            "operation: No response body."),
    OSError("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket does not exist"),
    ValueError("not storage"),
])
def test_other_errors_are_not(e):
    assert not retry.is_transient(e)


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def test_retries_until_it_works_with_growing_jittered_pauses():
    clock, calls = FakeClock(), []

    def flaky():
        calls.append(clock.now)
        if len(calls) < 6:
            raise SLOWDOWN
        return "ok"

    r = retry.Retrier("s3://x/y", 120, sleep=clock.sleep, clock=clock)
    assert r("writing a", flaky) == "ok"
    assert len(calls) == 6
    for i, s in enumerate(clock.sleeps):
        full = min(retry.BACKOFF_MAX_S, retry.BACKOFF_FIRST_S * 2 ** i)
        assert full / 2 <= s <= full


def test_past_the_budget_one_line_storage_error_not_an_oserror():
    clock = FakeClock()
    r = retry.Retrier("s3://x/y", 30, sleep=clock.sleep, clock=clock)

    def down():
        clock.now += 1.0  # each attempt takes a second
        raise REFUSED

    with pytest.raises(retry.StorageUnavailable) as info:
        r("writing x/y/round_1/MANIFEST.json", down)
    e = info.value
    # A StorageError (the CLI's one line), and not an OSError: code reading an
    # unreadable manifest as "no round" must not take an outage for one.
    assert isinstance(e, StorageError) and not isinstance(e, OSError)
    msg = str(e)
    assert "\n" not in msg and msg.startswith("storage s3://x/y unavailable: writing x/y/round_1/MANIFEST.json")
    assert "retry budget 30s" in msg and retry.BUDGET_ENV in msg and "Could not connect" in msg
    assert 30 <= clock.now <= 30 + 1 + 1e-9  # no pause past the deadline, one last attempt at it
    assert "When " not in msg  # pyarrow's preamble, the key is named already


def test_a_non_transient_error_is_raised_at_once():
    clock = FakeClock()
    r = retry.Retrier("s3://x/y", 30, sleep=clock.sleep, clock=clock)
    with pytest.raises(FileNotFoundError):
        r("reading a", lambda: (_ for _ in ()).throw(FileNotFoundError("gone")))
    assert clock.sleeps == []


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.delenv(retry.BUDGET_ENV, raising=False)
    assert retry.budget_s() == retry.DEFAULT_BUDGET_S
    monkeypatch.setenv(retry.BUDGET_ENV, "5")
    assert retry.budget_s() == 5.0
    for bad in ("soon", "-1"):
        monkeypatch.setenv(retry.BUDGET_ENV, bad)
        with pytest.raises(StorageError, match=retry.BUDGET_ENV):
            retry.budget_s()


def test_retrying_filesystem_is_a_pyarrow_filesystem_that_pickles(tmp_path):
    """What Ray Tune and pyarrow.dataset are handed: a real FileSystem, sent to
    trial processes by pickle with its budget."""
    fs = retry.retrying(pafs.LocalFileSystem(), "local")
    assert isinstance(fs, pafs.FileSystem)
    p = str(tmp_path / "a.bin")
    with fs.open_output_stream(p) as f:
        f.write(b"x" * 10)
        f.write(b"y")
    with fs.open_input_stream(p) as f:
        assert f.read() == b"x" * 10 + b"y"
    with fs.open_input_file(p) as f:
        assert f.size() == 11 and f.read_at(2, 9) == b"xy"
    back = pickle.loads(pickle.dumps(fs))
    assert back.get_file_info(p).size == 11
    assert back.handler.budget == fs.handler.budget
    with pytest.raises(FileNotFoundError):
        fs.open_input_stream(str(tmp_path / "nope"))
