"""`--storage s3://...` against a real S3-protocol server on loopback.

moto's standalone server (`moto[server]`) runs as its own process bound to
127.0.0.1; everything else is the code users run: pyarrow's S3FileSystem
configured from the standard AWS_* variables, the CLI in a subprocess, Ray
Tune writing its own state through the same filesystem. The sweep is killed
(SIGKILL of the driver's process group) after its first committed round and
re-run; the result must equal a sweep on local storage, bit for bit on CPU."""
import json
import os
import signal
import subprocess
import sys
import time

import boto3  # noqa: F401  (with moto[server], the `test` extra: a missing one is an error, not a skip)
import moto.server  # noqa: F401
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from bench.moto import moto_server
from tests.helpers import RUN_ENV, TINY_YAML, cli, manifests, uninterrupted_rows

pytestmark = pytest.mark.ray


BUCKET = "lth-test"


# Two trials x three rounds, with a mid-round checkpoint every epoch so the
# partial-checkpoint path (write, prune older, load on resume, delete) runs on S3.
S3_YAML = TINY_YAML.replace("[0.1, 0.2]", "[0.1]").replace(
    "resources: {gpu: 0, cpu: 1}", "resources: {gpu: 0, cpu: 1}\n  runtime: {checkpoint_every: 1}")


METRICS = ["density", "val_acc", "test_acc", "train_acc"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment that points at it."""
    with moto_server(str(tmp_path_factory.mktemp("moto") / "moto.log"), BUCKET) as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The same variables in this process (for in-process reads of the bucket)."""
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return s3


def assert_rows_equal(rows: list[dict], reference: list[dict]) -> dict:
    """`query --format json` rows equal the reference's, key for key and bit for bit
    on the CPU, with no (trial_id, round) twice; returns them by key."""
    got, ref = _by_key(rows), _by_key(reference)
    assert len(rows) == len(got) == 6, "duplicate (trial_id, round) rows"
    assert got.keys() == ref.keys()
    for k in ref:
        assert [got[k][m] for m in METRICS] == [ref[k][m] for m in METRICS], k
    return got


def _keys(client, prefix):
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def _manifest_keys(client, prefix):
    return [k for k in _keys(client, prefix) if k.endswith("/MANIFEST.json") and "/round_" in k
            and "/partial/" not in k]


def test_store_primitives_on_s3(s3_env, tmp_path):
    """Each FS operation the commit protocol relies on, on real S3 semantics
    (no directories, only keys and markers; copy+delete instead of rename)."""
    from workers.store import FS, SweepStore

    fs = FS(f"s3://{BUCKET}/prims")
    assert not fs.local and fs.uri == f"s3://{BUCKET}/prims"
    p = fs.join("a", "b", "x.bin")
    fs.write(p, b"one")
    fs.write(p, b"two")
    assert fs.read(p) == b"two" and fs.exists(p) and fs.exists(fs.join("a"))
    assert fs.listdir(fs.join("a")) == ["b"] and fs.listdir(fs.join("nope")) == []
    fs.move(p, fs.join("a", "y.bin"))
    assert not fs.exists(p) and fs.read(fs.join("a", "y.bin")) == b"two"
    fs.delete_dir(fs.join("a"))
    fs.delete_dir(fs.join("a"))  # idempotent, like the local one
    fs.delete_file(fs.join("a", "y.bin"))
    assert not fs.exists(fs.join("a", "y.bin"))

    lin = SweepStore(f"s3://{BUCKET}/prims", "sw").lineage("t0")
    for k in range(3):
        lin.commit_round(k, {"w.bin": bytes([k]) * 10}, {"round": k}, {"spec": 1})
    assert lin.committed_prefix() == 3 and lin.round_uri(1) == f"s3://{BUCKET}/prims/sw/trials/t0/round_1"
    assert lin.load_round(2, ["w.bin"]) == {"w.bin": bytes([2]) * 10}
    assert lin.invalidate_from(1) == [1, 2]
    assert lin.committed_prefix() == 1 and lin.manifests_any() == [0]
    lin.save_partial(1, 1, {"m.bin": b"e1"}, {"h": 1})
    lin.save_partial(1, 2, {"m.bin": b"e2"}, {"h": 2})
    assert lin.fs.listdir(lin.partial_dir(1)) == ["epoch_2"]  # older checkpoint pruned
    assert lin.load_partial(1) == (2, {"m.bin": b"e2"}, {"h": 2})
    lin.clear_partial(1)
    assert lin.load_partial(1) is None
    assert not [k for k in _keys(s3_env["client"], "prims/sw/trials/t0/partial/") if not k.endswith("/")]


@pytest.fixture(scope="module")
def local_reference(request):
    return uninterrupted_rows(request, S3_YAML)


def _by_key(rows):
    return {(r["trial_id"], r["round"]): r for r in rows}


def test_sweep_on_s3_killed_and_resumed_equals_local(s3_env, local_reference, tmp_path):
    client, env_s3 = s3_env["client"], s3_env["env"]
    secret, key_id = env_s3["AWS_SECRET_ACCESS_KEY"], env_s3["AWS_ACCESS_KEY_ID"]
    storage = f"s3://{BUCKET}/sweeps"
    (tmp_path / "experiments.yaml").write_text(S3_YAML)
    # s3_env put the AWS_* variables into os.environ: the CLI processes inherit them.
    env = {**os.environ, **RUN_ENV}
    outputs = []

    def run_cli(*args, timeout=300):
        r = cli(*args, "--storage", storage, cwd=tmp_path, timeout=timeout)
        outputs.append(r.stdout + r.stderr)
        return r

    # 1. Start the sweep; SIGKILL the driver's whole process group (driver, Ray)
    #    as soon as the first round is committed on S3.
    cmd = [sys.executable, "-m", "orchestrator", "run", "-e", "tiny", "--num-cpus", "2",
           "--storage", storage]
    with open(tmp_path / "first.log", "w+") as log:
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not _manifest_keys(client, "sweeps/tiny/trials/"):
                assert p.poll() is None, "the sweep ended before its first commit"
                if time.time() > deadline:
                    pytest.fail("no round committed in time")
                time.sleep(0.1)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        log.seek(0)
        outputs.append(log.read())
    assert p.returncode == -signal.SIGKILL
    # A trial process can outlive the killed raylet for a moment and finish
    # the commit it was writing: wait until the bucket stops changing.
    before, settled = manifests(storage), time.time() + 60
    while time.time() < settled:
        time.sleep(2)
        now = manifests(storage)
        if now == before:
            break
        before = now
    assert len(before) >= 1

    # 2. status reads the half-done sweep straight from the bucket.
    s = run_cli("status", "-e", "tiny", "--json")
    assert s.returncode == 0, s.stderr
    st = json.loads(s.stdout)
    assert st["trials"]["total"] == 2 and st["rounds"]["total"] == 6
    assert st["rounds"]["committed"] == len(before)

    # 3. The same command again resumes from the committed rounds on S3. The
    #    killed driver's lease is still there, fresh: the new driver, on the
    #    same machine, finds its pid gone and takes over at once instead of
    #    being refused (a holder elsewhere is watched: tests/workers/test_lease.py).
    assert _keys(client, "sweeps/tiny/DRIVER_LEASE.json")
    r = run_cli("run", "-e", "tiny", "--num-cpus", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"pid {p.pid}) is no longer running: taking over" in r.stdout
    assert not _keys(client, "sweeps/tiny/DRIVER_LEASE.json")  # released at the end
    after = manifests(storage)
    assert {k: after[k] for k in before} == before, "a round committed before the kill was trained again"
    assert len(after) == 6

    # 4. status and query read the finished sweep from S3; the table equals local storage's.
    st = json.loads(run_cli("status", "-e", "tiny", "--json").stdout)
    assert st["trials"] == {"total": 2, "done": 2, "running": 0, "pending": 0, "failed": 0}
    assert st["rounds"] == {"committed": 6, "total": 6}
    q = run_cli("query", "-e", "tiny", "--format", "json")
    assert q.returncode == 0, q.stderr
    got = assert_rows_equal(json.loads(q.stdout), local_reference)
    for k in got:
        assert got[k]["checkpoint_uri"] == f"{storage}/tiny/trials/{k[0]}/round_{k[1]}"

    # 5. The Parquet dataset on S3 is readable by plain pyarrow as well.
    s3fs = pafs.S3FileSystem(endpoint_override=s3_env["endpoint"].split("://")[1], scheme="http",
                             access_key=key_id, secret_key=secret, region="us-east-1")
    table = pads.dataset(f"{BUCKET}/sweeps/tiny/results", filesystem=s3fs, format="parquet").to_table()
    assert table.num_rows == 6

    # 6. Lineages, manifests, the results table and Tune's state all live in the
    #    bucket; no partial checkpoint is left; no credential is anywhere.
    keys = _keys(client, "sweeps/tiny/")
    assert any("/results/part-" in k for k in keys) and any("/layers/part-" in k for k in keys)
    assert any(k.startswith("sweeps/tiny/_tune/") for k in keys)
    assert any(k.endswith("/weights.sparse.safetensors") for k in keys)
    assert not [k for k in keys if "/partial/" in k and not k.endswith("/")], "partial checkpoints left"
    for k in keys:
        body = client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
        assert secret.encode() not in body and key_id.encode() not in body, f"credential in s3://{BUCKET}/{k}"
    for out in outputs:
        assert secret not in out and key_id not in out
