"""A moto S3 server on 127.0.0.1 with one bucket: the S3 of `bench --scale
--scale-storage s3` and of the S3 tests (moto[server] and boto3: the test extra).

`preload`: a directory whose files the server holds from its start, each as
one object (key: `prefix/` + its path under the directory). Putting 10^5
objects through moto's HTTP front takes most of an hour on two cores; put
into its backend before it serves, a few seconds. `bench --restart-scale`
builds its sweeps that way: the bytes are the project's commit code's, only
the transport is skipped. Run as `python -m bench.moto PORT BUCKET [DIR PREFIX]`."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from typing import Optional


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(log_path: str, bucket: str, preload: Optional[tuple[str, str]] = None):
    """`preload`: (directory, key prefix), see above. Yields {"env": the AWS_* variables that reach it (fresh fake keys), "client": a
    boto3 client, "endpoint": its URL}; the server is stopped on exit."""
    import boto3
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(),
           "AWS_SECRET_ACCESS_KEY": "lth-secret-" + uuid.uuid4().hex, "AWS_REGION": "us-east-1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.moto", str(port), bucket, *(preload or ())],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            client = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_REGION"],
                                  aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                  aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
            deadline = time.time() + 600
            while True:
                try:
                    client.head_bucket(Bucket=bucket)  # created by the server before it serves
                    break
                except Exception:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"moto server did not come up on {endpoint}")
                    time.sleep(0.2)
            yield {"env": env, "client": client, "endpoint": endpoint}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _serve(port: int, bucket: str, preload: Optional[str] = None, prefix: str = "") -> None:
    import os

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import main
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]  # the one the server answers from, any access key
    backend.create_bucket(bucket, "us-east-1")
    n = 0
    for root, _, files in (os.walk(preload) if preload else ()):
        for name in files:
            path = os.path.join(root, name)
            key = "/".join(p for p in (prefix, os.path.relpath(path, preload).replace(os.sep, "/")) if p)
            with open(path, "rb") as f:
                backend.put_object(bucket, key, f.read())
            n += 1
    print(f"moto: {n} objects preloaded into {bucket}", flush=True)
    main(["-H", "127.0.0.1", "-p", str(port)])


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], *sys.argv[3:5])
