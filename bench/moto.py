"""A moto S3 server on 127.0.0.1 with one bucket: the S3 of `bench --scale
--scale-storage s3` and of the S3 tests (moto[server] and boto3: the test extra)."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(log_path: str, bucket: str):
    """Yields {"env": the AWS_* variables that reach it (fresh fake keys), "client": a
    boto3 client, "endpoint": its URL}; the server is stopped on exit."""
    import boto3
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(),
           "AWS_SECRET_ACCESS_KEY": "lth-secret-" + uuid.uuid4().hex, "AWS_REGION": "us-east-1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            client = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_REGION"],
                                  aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                  aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
            deadline = time.time() + 60
            while True:
                try:
                    client.create_bucket(Bucket=bucket)
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
