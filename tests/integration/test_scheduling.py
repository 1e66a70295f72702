"""Lineages built from another lineage start as soon as theirs has finished: one
Tune run, no barrier between phases; a parent that fails marks its dependents."""
import json

import pandas as pd
import pytest

from orchestrator.config import load_config
from orchestrator.grid import expand
from tests.helpers import cli, table
from workers.methods import parent_spec
from workers.store import SweepStore

pytestmark = pytest.mark.ray

# Two imp parents, one on 5% of digits and one on 90% (18x the images), each with
# a same_layer_sparse lineage built from it.
YAML = """
experiments:
  dep:
    datasets: [digits]
    fractions: [0.05, 0.9]
    methods: [imp, same_layer_sparse]
    model: {width: 0.125}
    train: {epochs: 8, batch_size: 20, lr: 0.05}
    imp: {rounds: 1, rewind_epoch: 1}
    eval: {val_per_class: 5}
    resources: {gpu: 0, cpu: 1}
"""


def _trials(tmp_path):
    trials = expand(load_config(str(tmp_path / "experiments.yaml"))["experiments"]["dep"])
    by = {(t.spec.data.fraction, t.spec.prune.method): t for t in trials}
    return by


def test_a_dependent_starts_when_its_own_parent_finishes(tmp_path, shared_ray):
    (tmp_path / "experiments.yaml").write_text(YAML)
    r = cli("run", "-e", "dep", *shared_ray, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    by = _trials(tmp_path)
    df = table(tmp_path / "runs", "dep")
    rows = lambda fraction, method: df[df["trial_id"] == by[(fraction, method)].trial_id]  # noqa: E731
    fast_child_started = rows(0.05, "same_layer_sparse").query("round == 1")["started_at"].min()
    slow_parent_done = rows(0.9, "imp")["finished_at"].max()
    fast_parent_done = rows(0.05, "imp")["finished_at"].max()
    assert fast_parent_done < fast_child_started < slow_parent_done, (fast_parent_done, fast_child_started,
                                                                       slow_parent_done)
    assert pd.Timestamp(rows(0.9, "same_layer_sparse")["started_at"].max()) > slow_parent_done
    assert "starts: what it is built from has finished" in r.stdout


def test_a_failed_parent_marks_its_dependent_failed_naming_it(tmp_path, shared_ray):
    (tmp_path / "experiments.yaml").write_text(YAML.replace("fractions: [0.05, 0.9]", "fractions: [0.05]"))
    by = {k: v for k, v in _trials(tmp_path).items() if k[0] == 0.05}
    parent, child = by[(0.05, "imp")], by[(0.05, "same_layer_sparse")]
    assert parent_spec(child.spec).trial_id == parent.trial_id
    # The parent's folder is a file: every write of its lineage fails.
    trials = tmp_path / "runs" / "dep" / "trials"
    trials.mkdir(parents=True)
    (trials / parent.trial_id).write_text("not a folder")
    r = cli("run", "-e", "dep", *shared_ray, "--max-failures", "0", cwd=tmp_path, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    marker = SweepStore(str(tmp_path / "runs"), "dep").lineage(child.trial_id).read_marker("FAILED.json")
    assert marker["parent"] == parent.trial_id and parent.trial_id in marker["error"]
    assert f"{child.trial_id} FAILED: built from lineage {parent.trial_id}" in r.stdout
    status = json.loads(cli("status", "-e", "dep", "--json", cwd=tmp_path).stdout)
    assert status["trials"]["failed"] >= 1
