"""A restart and `status` of a finished sweep on S3, counted in requests on the wire.

The sweep (200 lineages x 5 rounds) is built through the project's own commit
code and served by a moto S3 server (bench/restart_scale.py); `lth-sweep run` and
`lth-sweep status` then run as users run them, through a proxy on loopback
that logs every request (bench/s3proxy.py). A restart with nothing to do reads
each lineage's pointer (a HEAD and a GET: pyarrow sizes an object before it
reads it) and each results shard once, never a manifest; `status` reads the
driver's summary, not a listing of the sweep. Counted, not timed."""
from __future__ import annotations

import collections
import os
import re

import pytest

from bench import restart_scale as RS

pytestmark = pytest.mark.ray

N, ROUNDS = 201, 5  # 67 cells of 3 seeds


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("restart"))
    with open(os.path.join(d, "experiments.yaml"), "w") as f:
        f.write(RS.experiment_yaml(N, ROUNDS))
    RS.build(d, ROUNDS, log=lambda *_: None)
    with RS._s3(d, latency_ms=0) as (proxy, env):
        proxy.keep_log = True  # every request, to classify (the bench only counts)
        yield d, proxy, env


def _kinds(entries) -> collections.Counter:
    out = collections.Counter()
    for e in entries:
        path = e["path"].split("?")[0]
        name = re.sub(r"[0-9a-f]{16}", "<trial>", path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1])
        out[(e["method"], re.sub(r"part-[0-9a-f]{2}", "part-XX", name))] += 1
    return out


def test_a_restart_reads_a_pointer_per_lineage_and_each_shard_once(finished):
    d, proxy, env = finished
    proxy.log.clear()
    r, _ = RS._cli(d, env, "run", "--num-cpus", "2", "--plain")
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    kinds = _kinds(proxy.log)
    shards = len({e["path"] for e in proxy.log if "/results/part-" in e["path"]})
    assert kinds[("GET", "<trial>/COMMITTED.json")] == kinds[("HEAD", "<trial>/COMMITTED.json")] == N, kinds
    assert not [k for k in kinds if "MANIFEST" in k[1]], kinds  # no manifest is read
    assert kinds[("GET", "results/part-XX.parquet")] == shards <= 256
    rest = sum(kinds.values()) - 2 * N - 2 * shards
    assert rest <= 20, kinds  # the lease, the plan, the summary, listings of the row-file folders
    print(f"\nrestart of {N} x {ROUNDS}: {sum(kinds.values())} requests ({2 * N} pointer, {2 * shards} shard, "
          f"{rest} other)")


def test_status_reads_the_driver_s_summary_not_the_sweep(finished):
    d, proxy, env = finished
    RS._cli(d, env, "run", "--num-cpus", "2", "--plain")  # a summary, whichever test ran first
    proxy.log.clear()
    r, _ = RS._cli(d, env, "status", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"source": "summary"' in r.stdout and f'"done": {N}' in r.stdout, r.stdout
    kinds = _kinds(proxy.log)
    assert sum(kinds.values()) <= 12 and not [k for k in kinds if "<trial>" in k[1]], kinds
