"""Fixtures of the dataset tests: a local HTTP server for the real download code, a file-open counter."""
import functools
import http.server
import threading

import pytest
from PIL import Image


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """(folder, base URL): a local HTTP server, so the real download code runs offline."""
    folder = tmp_path / "served"
    folder.mkdir()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield folder, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def count_opens(monkeypatch):
    """Image.open, counted; set count_opens.allowed = False to make any decode fail the test."""
    real = Image.open

    class Calls(list):
        allowed = True

    calls = Calls()

    def counting(*a, **k):
        if not calls.allowed:
            raise AssertionError("decoded although the cache is valid")
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(Image, "open", counting)
    return calls


