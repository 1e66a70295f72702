"""What tests share: the tiny experiment, running the CLI as a user does, reading a sweep back."""
import io
import os
import subprocess
import sys

import matplotlib.image
import pandas as pd

from workers.store import SweepStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Trials of CLI runs train on the CPU even on a GPU host: the bit-exact checks
# are CPU facts, and fake GPUs must not land on real ones (CUDA tests: -m cuda).
CPU_ENV = {"LTH_DEVICE": "cpu"}
# What a CLI run's processes (the driver, and the trials of the Ray it starts,
# or of the tests' shared Ray) see on top of the caller's environment.
RUN_ENV = {"PYTHONPATH": ROOT, "RAY_AIR_NEW_OUTPUT": "0", **CPU_ENV}


# A tiny experiment: real digits, a real (narrow) ResNet-18, seconds per lineage.
TINY_YAML = """
defaults:
  arch: resnet18
  model: {width: 0.125}
  train: {epochs: 3, batch_size: 40, lr: 0.05}
  imp: {rounds: 2, rate: 0.2, rewind_epoch: 1}
  resources: {gpu: 0, cpu: 1}
experiments:
  tiny:
    datasets: [digits]
    fractions: [0.1, 0.2]
    augmentations: [none, basic]
    methods: [imp]
"""


def cli(*args, cwd, timeout=300, env=None, **kw):
    """Run `lth-sweep ARGS` as its own process, as a user would (env: its environment, default ours)."""
    env = {**(os.environ if env is None else env), **RUN_ENV}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def table(storage, sweep="tiny"):
    return pd.read_parquet(os.path.join(storage, sweep, "results"))


def manifests(storage, sweep="tiny"):
    """{(trial, round): manifest digest}: a round trained twice would change it."""
    st = SweepStore(str(storage), sweep)
    return {(t, k): m["manifest_sha256"] for t in st.trial_ids()
            for k, m in st.lineage(t).manifests().items()}


def uninterrupted(d, yaml_text, ray=("--num-cpus", "2")):
    """Run experiment `tiny` of `yaml_text` once, to the end, in folder d (`ray`: the
    run's Ray flags, by default a local Ray of its own)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "experiments.yaml").write_text(yaml_text)
    r = cli("run", "-e", "tiny", *ray, cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d, r


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(source):
    """A valid, non-empty PNG that matplotlib reads back as an image."""
    data = open(source, "rb").read() if isinstance(source, str) else source
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000
    img = matplotlib.image.imread(io.BytesIO(data))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def race(fn, n: int) -> list:
    """Call fn() from n threads released at the same instant; its results (an
    exception in any thread fails the caller)."""
    import threading
    barrier = threading.Barrier(n)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(fn())
        except Exception as e:  # re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
