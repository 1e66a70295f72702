"""One sweep that several integration modules read (a Ray start is ~10 s on 2 cores)."""
import os

import pytest

from tests.helpers import TINY_YAML, built_once, cli

# Two lineages of 3 rounds, in a yaml that is not ./experiments.yaml, under a
# sweep name that is not the experiment's, on storage that is not ./runs, with
# every tracker (tensorboard from the yaml, the others from the command line).
SHARED_YAML = TINY_YAML.replace("fractions: [0.1, 0.2]", "fractions: [0.2]")
SHARED_ROUNDS = 3


def shared_flags(d):
    return ["-c", str(d / "conf" / "my.yaml"), "-e", "tiny", "--name", "mine", "--storage", str(d / "store")]


@pytest.fixture(scope="session")
def swept(tmp_path_factory):
    """(folder, the run's CompletedProcess): `plan` then `run` with the shared flags
    (built once per pytest run, whichever xdist worker asks first)."""
    return built_once(tmp_path_factory, "swept", _sweep)


def _sweep(d):
    (d / "conf").mkdir(parents=True, exist_ok=True)
    (d / "conf" / "my.yaml").write_text(SHARED_YAML + "    trackers: [tensorboard]\n")
    r = cli("plan", *shared_flags(d), cwd=d)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    r = cli("run", *shared_flags(d), "--num-cpus", "2", "--tracker", "mlflow", "--tracker", "wandb", cwd=d, env=env,
            timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r
