"""S3 failures survived: a sweep on `--storage s3://...` behind a fault-injecting proxy.

The moto server of tests/integration/test_s3.py sits behind tests/integration/
s3proxy.py (threads of this process, on loopback): the CLI's processes (the
driver, its Ray, the trials) reach S3 only through the proxy, which answers
bursts of `503 SlowDown`, drops connections before forwarding a request,
after forwarding it (the PUT lands, the answer is lost) and half-way through
an answer, and goes down for OUTAGE_S seconds during a round commit and
during a results table write. The sweep must end as an uninterrupted local one does (the same
table), with every round committed exactly once (the proxy's log of the PUTs
that landed: a round trained or committed a second time would carry other
bytes) and every committed file verifying. An outage longer than the retry
budget stops the run with one line naming the storage failure, and the same
command afterwards resumes from the committed rounds.

OUTAGE_S (LTH_TEST_OUTAGE_S, default 8) is longer than the SDK's own three
attempts, so our retries carry every outage; the full version, outages of
30 s as a real S3 brown-out lasts, is `LTH_TEST_OUTAGE_S=30 pytest
tests/integration/test_s3_faults.py` (about 2.5 min instead of 1). The
retry budget of the second test scales with it (a sixth of it; 5 s at 30).
"""
import hashlib
import json
import os
import re

import pytest

from tests.helpers import RUN_ENV, cli, manifests
from bench.s3proxy import Fault, FaultProxy, one_object, puts, requests
from tests.integration.test_s3 import (BUCKET, S3_YAML, _manifest_keys, assert_rows_equal,  # noqa: F401
                                       local_reference, s3, s3_env)

pytestmark = pytest.mark.ray

OUTAGE_S = float(os.environ.get("LTH_TEST_OUTAGE_S", "8"))


@pytest.fixture(scope="module")
def proxy(s3):
    p = FaultProxy(int(s3["endpoint"].rsplit(":", 1)[1]))
    try:
        yield p
    finally:
        p.close()


def _env(s3_env, proxy, **extra):
    """The CLI's environment: the bucket through the proxy."""
    return {**os.environ, **RUN_ENV, "AWS_ENDPOINT_URL": proxy.endpoint, **extra}


def _landed_manifests(proxy, client, prefix):
    """{manifest key: (sha256 of the object now, {sha256 of every PUT of it that landed})}."""
    out = {}
    for key in _manifest_keys(client, prefix):
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        landed = {e["sha256"] for e in proxy.entries("PUT", f"/{BUCKET}/{key}") if e["status"] == 200}
        out[key] = (hashlib.sha256(body).hexdigest(), landed)
    return out


def _assert_table_equals_reference(storage, cwd, env, reference):
    q = cli("query", "-e", "tiny", "--format", "json", "--storage", storage, cwd=cwd, env=env)
    assert q.returncode == 0, q.stderr
    assert_rows_equal(json.loads(q.stdout), reference)


def test_sweep_survives_slowdowns_dropped_connections_and_outages(s3_env, proxy, local_reference, tmp_path):
    client = s3_env["client"]
    storage = f"s3://{BUCKET}/faults"
    (tmp_path / "experiments.yaml").write_text(S3_YAML)
    proxy.clear()
    # More failures in a row than the SDK's own 3 attempts: our retries take over.
    faults = {
        "503 on weights": proxy.add(Fault("slowdown", one_object(puts("/weights")), times=5)),
        "503 on listings": proxy.add(Fault("slowdown", requests("list-type=2", "GET"), times=4)),
        "dropped before a PUT": proxy.add(Fault("drop_request", puts("/predictions.safetensors"), times=4)),
        "dropped after a PUT landed": proxy.add(Fault("drop_response", puts("/metrics.json"), times=4)),
        # A manifest is one PutObject (workers/store.py: allow_delayed_open): it lands, its answer is lost.
        "commit answered, answer lost": proxy.add(Fault("drop_response", lambda m, p: m == "PUT" and (
            "/round_0/MANIFEST.json" in p) and "/partial/" not in p, times=1)),
        "answer cut half-way": proxy.add(Fault("truncate_response", requests("/round_0/MANIFEST.json", "GET"),
                                               times=4)),
        # OUTAGE_S down, from the first PUT of a round-1 manifest (a commit) ...
        "outage in a commit": proxy.add(Fault("outage", puts("/round_1/MANIFEST.json"), seconds=OUTAGE_S)),
        # ... and from the first PUT of the results table once a round is committed
        # (the driver adding that round's rows).
        "outage in a table write": proxy.add(Fault("outage", lambda m, p: puts("/results/")(m, p) and any(
            e["method"] == "PUT" and e["status"] == 200 and "/MANIFEST.json" in e["path"]
            and "/partial/" not in e["path"] for e in proxy.log), seconds=OUTAGE_S)),
    }
    env = _env(s3_env, proxy)
    r = cli("run", "-e", "tiny", "--num-cpus", "2", "--storage", storage, cwd=tmp_path, env=env, process=True,
            timeout=500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "unavailable" not in out and "results table not updated" not in out
    seen = sorted({(e["method"], e["path"].split("?")[0].rsplit("/", 1)[-1]) for e in proxy.log})
    assert not [name for name, f in faults.items() if not f.fired], f"faults not injected; requests seen: {seen}"
    assert len(proxy.outages) == 2
    assert "/MANIFEST.json" in faults["outage in a commit"].fired[0][2]
    assert "/results/" in faults["outage in a table write"].fired[0][2]
    # Five 503s in a row outlast the SDK's 3 attempts: our layer PUT that object again.
    hit = faults["503 on weights"].fired[0][2].split("?")[0]
    assert len(proxy.entries("PUT", hit)) >= 6

    # Every round committed once: each manifest that landed carried the bytes
    # the bucket holds now (a round trained or committed again would differ).
    landed = _landed_manifests(proxy, client, "faults/tiny/trials/")
    assert len(landed) == 6
    for key, (now, puts_landed) in landed.items():
        assert puts_landed == {now}, f"{key} committed with different contents: {len(puts_landed)}"

    v = cli("verify", "-e", "tiny", "--storage", storage, cwd=tmp_path, env=env)
    assert v.returncode == 0, v.stdout + v.stderr
    _assert_table_equals_reference(storage, tmp_path, env, local_reference)


def test_outage_past_the_retry_budget_stops_with_one_line_then_resumes(s3_env, proxy, local_reference, tmp_path):
    storage = f"s3://{BUCKET}/outage"
    (tmp_path / "experiments.yaml").write_text(S3_YAML)
    proxy.clear()
    proxy.wait_outages_over()
    # Three retry budgets long: the trial's calls and the driver's give up.
    outage = proxy.add(Fault("outage", puts("/round_1/MANIFEST.json"), seconds=OUTAGE_S / 2))
    env = _env(s3_env, proxy, LTH_S3_RETRY_BUDGET_S=f"{OUTAGE_S / 6:g}")
    cmd = ("run", "-e", "tiny", "--num-cpus", "2", "--max-failures", "0", "--storage", storage)

    r = cli(*cmd, cwd=tmp_path, env=env, process=True, timeout=300)
    out = r.stdout + r.stderr
    assert outage.fired
    assert r.returncode in (1, 2), out  # a failed trial (1), or the driver's own storage error (2)
    # One line names the storage failure: the driver's summary of the failed
    # trials (exit 1, as for any failed trial), or its own error line (exit 2)
    # when the outage outlasted the trials and caught the driver's own writes.
    named = f"storage s3://{BUCKET}/outage unavailable"
    if r.returncode == 1:
        summary = [line for line in r.stdout.splitlines() if "trial(s) failed after 0 retries" in line]
        assert summary and named in summary[-1], out
    else:
        assert r.stderr.strip().splitlines()[-1].startswith(f"lth-sweep: error: {named}"), out
    # The driver ends on its own terms: no traceback of its own, only those Ray
    # logs itself (its report of each failed trial, as for any failed trial, and
    # of its own storage calls that failed).
    lines = r.stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            assert i > 0 and re.match(r"\d{4}-\d\d-\d\d [\d:,]+\s+(ERROR|WARNING) \S+\.py:\d+ -- ", lines[i - 1]), \
                r.stderr

    proxy.wait_outages_over()
    before = manifests(storage)
    assert len(before) < 6
    r = cli(*cmd, cwd=tmp_path, env=env, process=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    after = manifests(storage)
    assert {k: after[k] for k in before} == before, "a round committed before the outage was trained again"
    assert len(after) == 6
    v = cli("verify", "-e", "tiny", "--storage", storage, cwd=tmp_path, env=env)
    assert v.returncode == 0, v.stdout + v.stderr
    _assert_table_equals_reference(storage, tmp_path, env, local_reference)
