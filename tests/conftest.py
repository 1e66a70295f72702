import os
import subprocess
import sys

import pandas as pd
import pytest

from workers.store import SweepStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def cli(*args, cwd, timeout=300, **kw):
    """Run `lth-sweep ARGS` as its own process, as a user would."""
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AIR_NEW_OUTPUT": "0"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def tiny_yaml(tmp_path):
    p = tmp_path / "experiments.yaml"
    p.write_text(TINY_YAML)
    return p


def table(storage, sweep="tiny"):
    return pd.read_parquet(os.path.join(storage, sweep, "results"))


def manifests(storage, sweep="tiny"):
    """{(trial, round): manifest digest}: a round trained twice would change it."""
    st = SweepStore(str(storage), sweep)
    return {(t, k): m["manifest_sha256"] for t in st.trial_ids()
            for k, m in st.lineage(t).manifests().items()}


def uninterrupted(d, yaml_text):
    """Run experiment `tiny` of `yaml_text` once, to the end, in folder d."""
    (d / "experiments.yaml").write_text(yaml_text)
    r = cli("run", "-e", "tiny", "--num-cpus", "2", cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return d, r


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted sweep of TINY_YAML, shared by the tests that compare against it."""
    return uninterrupted(tmp_path_factory.mktemp("ref"), TINY_YAML)
