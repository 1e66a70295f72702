"""Adaptive seeds on a real sweep: seeds go only to the cell whose claim is open,
the run says which and why, the table shows the decision and the anytime-valid
interval, and a killed adaptive sweep resumed with the same command ends with
the table of an uninterrupted one.

Which claim a few tiny lineages resolve depends on the machine's bits, so the
test fixes it the other way round: a fixed sweep of 4 seeds per cell runs
first; from its gains the test picks the effect that one cell's 4 seeds
exclude and the other's do not (the wider cell's own interval, away from the
narrower one). The adaptive sweep then reuses those lineages (same ids: added
seeds are ordinary trials), as a user's would after a fixed sweep."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from orchestrator import adaptive, adaptive_run, sequential
from orchestrator.config import validate
from orchestrator.grid import expand
from tests.helpers import RUN_ENV, cli, manifests, table
from tests.integration.test_chaos import wait_until

import yaml

pytestmark = pytest.mark.ray

YAML = """
experiments:
  tiny:
    datasets: [digits]
    images_per_class: [5, 50]
    augmentations: [none]
    seeds: [0, 1, 2, 3]
    model: {width: 0.125}
    train: {epochs: 3, batch_size: 40, lr: 0.05}
    imp: {rounds: 2, rate: 0.2, rewind_epoch: 1}
    resources: {gpu: 0, cpu: 1}
"""
METRICS = ["density", "val_acc", "test_acc", "train_acc"]


def _trials(flag):
    exp = validate(yaml.safe_load(YAML))["experiments"]["tiny"]
    return expand({**exp, "seeds": adaptive.parse_flag(flag)})


def _effect_that_splits(storage):
    """(effect, the cell it resolves, the cell it leaves open) from the 4 stored seeds of each cell."""
    from orchestrator.results import results_dataset
    from workers.store import SweepStore
    trials = _trials("start=4,max=4")
    gains = adaptive.cell_gains(adaptive.by_cell(trials), adaptive.gains_by_trial(
        results_dataset(SweepStore(str(storage), "tiny"))))
    c4 = sequential.critical_t(4, 2 / sequential.ALPHA)  # 2 cells: alpha / 2 each
    spread = {}
    for cell, g in gains.items():
        x = np.array([g[s] for s in range(4)])
        spread[cell] = (x.mean(), c4 * x.std(ddof=1) / 2)
    # An effect inside one cell's interval and outside the other's: the middle of the
    # widest piece of the two intervals' symmetric difference (they differ unless equal).
    (a, (ma, ha)), (b, (mb, hb)) = spread.items()
    pieces = [(ma - ha, mb - hb), (ma + ha, mb + hb)]
    lo, hi = max(pieces, key=lambda p: abs(p[0] - p[1]))
    effect = (lo + hi) / 2
    inside_a = abs(effect - ma) < ha
    narrow, wide = (b, a) if inside_a else (a, b)
    assert abs(hi - lo) > 0.02 * max(ha, hb) and -1 < effect < 1, (spread, "these gains cannot split the cells")
    return effect, narrow, wide


def _adaptive(effect):
    return ["--adaptive", f"start=4,step=2,max=6,effect={effect}"]


def test_seeds_go_to_the_open_cell_and_a_killed_run_resumes_to_the_same_table(tmp_path, shared_ray):
    first = tmp_path / "uninterrupted"
    first.mkdir()
    (first / "experiments.yaml").write_text(YAML)
    r = cli("run", "-e", "tiny", *shared_ray, cwd=first)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    fixed = manifests(first / "runs")
    effect, resolved, open_cell = _effect_that_splits(first / "runs")
    killed = tmp_path / "killed"
    shutil.copytree(first, killed)  # the same fixed sweep before it, for the resumed run

    r = cli("run", "-e", "tiny", *_adaptive(effect), *shared_ray, cwd=first)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = adaptive_run.cell_names(_trials("start=4,max=6"))
    lines = r.stdout.splitlines()
    # The run names the cell that gets more seeds, and why; and the one that does not.
    assert any(names[open_cell] in ln and "holds" in ln and "2 seeds more (6)" in ln for ln in lines), r.stdout
    assert any(names[resolved] in ln and "excludes" in ln and "resolved at 4 seeds" in ln for ln in lines), r.stdout
    # Storage: 4 lineages of the resolved cell (reused), 6 of the open one; the fixed ones untouched.
    trials = _trials("start=4,max=6")
    stored = {tid for tid, _ in manifests(first / "runs")}
    by_cell = adaptive.by_cell(trials)
    assert stored == set(by_cell[resolved][:4]) | set(by_cell[open_cell][:6])
    assert all(manifests(first / "runs")[k] == v for k, v in fixed.items())

    # `status` counts the lineages the decisions planned, not every seed up to max
    st = json.loads(cli("status", "-e", "tiny", "--json", *_adaptive(effect), cwd=first).stdout)
    assert st["trials"]["total"] == st["trials"]["done"] == 10
    q = cli("query", "-e", "tiny", "--compare", "--format", "json", cwd=first)
    assert q.returncode == 0, q.stderr
    rows = {row["cell_id"]: row for row in json.loads(q.stdout)}
    assert "anytime-valid confidence sequence" in q.stderr
    got = {row["seeds_planned"]: row for row in rows.values()}
    assert set(got) == {4, 6}
    assert got[4]["resolved"] is True and got[4]["resolved_at"] == 4 and got[4]["n_seeds"] == 4
    assert not (got[4]["cs_low"] <= effect <= got[4]["cs_high"])
    assert got[6]["n_seeds"] == 6 and got[6]["decision"] in ("resolved", "open at max")
    assert got[6]["gain_ci_low"] is not None  # the fixed-n interval beside the sequence
    from orchestrator.api import adaptive as api_adaptive  # the notebook's view: the same table
    t = api_adaptive(str(first / "runs"), "tiny").set_index("cell_id")
    assert {c: int(t.loc[c, "seeds_planned"]) for c in t.index} == {c: r["seeds_planned"] for c, r in rows.items()}

    # The same adaptive command, killed (SIGKILL, the process group) once the open cell's
    # 5th seed has committed a round, then run again: the same decisions, the same table.
    cmd = [sys.executable, "-m", "orchestrator", "run", "-e", "tiny", *_adaptive(effect), "--num-cpus", "2"]
    p = subprocess.Popen(cmd, cwd=killed, env={**os.environ, **RUN_ENV}, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (killed / "runs" / "tiny" / "trials" / by_cell[open_cell][4] / "round_0"
                            / "MANIFEST.json").exists(), p, timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=60)
    assert len(manifests(killed / "runs")) < len(manifests(first / "runs")), "the kill came after the end"
    r = cli("run", "-e", "tiny", *_adaptive(effect), *shared_ray, cwd=killed)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a = table(first / "runs").sort_values(["trial_id", "round"]).reset_index(drop=True)
    b = table(killed / "runs").sort_values(["trial_id", "round"]).reset_index(drop=True)
    assert a[["trial_id", "round", *METRICS]].equals(b[["trial_id", "round", *METRICS]])
    q2 = cli("query", "-e", "tiny", "--compare", "--format", "json", cwd=killed)
    assert json.loads(q2.stdout) == json.loads(q.stdout)

    # A fixed sweep of the same cells in the same folder reuses the adaptive lineages
    # (ordinary trials) and trains only the seeds it lacks; its tables show every seed.
    before = manifests(first / "runs")
    (first / "experiments.yaml").write_text(YAML.replace("seeds: [0, 1, 2, 3]", "seeds: [0, 1, 2, 3, 4, 5]"))
    r = cli("run", "-e", "tiny", *shared_ray, cwd=first)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = manifests(first / "runs")
    assert all(after[k] == v for k, v in before.items())
    assert {t for t, _ in after} - {t for t, _ in before} == set(by_cell[resolved][4:6])
    q = json.loads(cli("query", "-e", "tiny", "--compare", "--format", "json", cwd=first).stdout)
    assert [row["n_seeds"] for row in q] == [6, 6] and "seeds_planned" not in q[0]
