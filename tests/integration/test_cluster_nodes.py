"""A multi-node Ray on one machine: trials spread over GPU nodes, a killed node, nodes that join late."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.helpers import ROOT, RUN_ENV, TINY_YAML, cli
from workers.store import SweepStore

pytestmark = pytest.mark.ray


@pytest.fixture
def cluster(monkeypatch):
    """Head (no CPU, no GPU: it only hosts GCS and the driver) + worker nodes
    with one fake GPU each. Node death is detected within ~3 s."""
    from ray.cluster_utils import Cluster

    # Every node's worker processes import the project like the driver does.
    monkeypatch.setenv("PYTHONPATH", ROOT)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                           "health_check_failure_threshold": 3}})
    c.workers = []

    def add_workers(n):
        c.workers += [c.add_node(num_cpus=1, num_gpus=1) for _ in range(n)]
        c.wait_for_nodes()
        return c.workers

    c.add_workers = add_workers
    try:
        yield c
    finally:
        c.shutdown()


def label_of(node) -> str:
    return node.node_id[:8]  # results' `node` is "<host>:<node id[:8]>"


def node_ids(series) -> set:
    return {n.rsplit(":", 1)[1] for n in series}


def _descendants(pids: set) -> set:
    """Every live process under `pids`, read from /proc (no psutil needed)."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def kill_machine(cluster, node) -> None:
    """What a machine losing power does: every process of that Ray node, its
    worker processes included, dies at the same instant. (Killing only the
    raylet, as remove_node does, leaves its workers running for a while and
    able to finish the trial on a node Ray has declared dead.)"""
    roots = {pi.process.pid for infos in node.all_processes.values() for pi in infos}
    for pid in _descendants(roots) | roots:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cluster.remove_node(node, allow_graceful=False)


# Lineages placed one per GPU (fuse: 1): GPU trials are otherwise fused by default.
GPU_YAML = (TINY_YAML.replace("resources: {gpu: 0, cpu: 1}", "resources: {gpu: 1, cpu: 1}\n  runtime: {fuse: 1}"))


def test_submit_spreads_trials_over_gpu_nodes(cluster, tmp_path):
    """`ray submit` runs a copy of orchestrator/submit.py on the head with python;
    it joins the cluster (address auto) and trials land on both GPU nodes."""
    workers = cluster.add_workers(2)
    (tmp_path / "experiments.yaml").write_text(
        GPU_YAML.replace("epochs: 3", "epochs: 2").replace("rounds: 2", "rounds: 1"))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(os.path.join(ROOT, "orchestrator", "submit.py"), home / "submit.py")
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AIR_NEW_OUTPUT": "0"}
    r = subprocess.run([sys.executable, str(home / "submit.py"), "-e", "tiny"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    df = pd.read_parquet(tmp_path / "runs" / "tiny" / "results")
    assert len(df) == 4 * 2 and not df.duplicated(["trial_id", "round"]).any()
    assert node_ids(df["node"]) == {label_of(w) for w in workers}  # both workers, never the head
    assert (df.groupby("trial_id")["node"].nunique() == 1).all()  # a lineage stays on its node
    assert (df["gpu_ids"] == "0").all()  # each node's one GPU, pinned by Ray


def _manifests(storage, sweep="tiny"):
    st = SweepStore(str(storage), sweep)
    if not st.exists():
        return {}
    return {(t, k): m for t in st.trial_ids() for k, m in st.lineage(t).manifests().items()}


def test_worker_node_killed_mid_trial_restarts_elsewhere(cluster, tmp_path):
    """A worker node dies (all its Ray processes SIGKILLed) while its trial is
    between rounds: Tune retries the trial on a surviving node (a spare GPU
    node is there), the lineage continues from its last committed round, and
    the table ends complete, without duplicates."""
    workers = cluster.add_workers(3)
    (tmp_path / "experiments.yaml").write_text(
        GPU_YAML.replace("[0.1, 0.2]", "[0.1]").replace("epochs: 3", "epochs: 4")
        .replace("runtime: {fuse: 1}", "runtime: {fuse: 1, checkpoint_every: 1}"))
    storage = tmp_path / "runs"
    env = {**os.environ, **RUN_ENV}
    log = open(tmp_path / "driver.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "-e", "tiny",
                          "--address", cluster.address], cwd=tmp_path, env=env,
                         start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        victim = None
        deadline = time.time() + 240
        while victim is None:
            assert p.poll() is None, "the sweep ended before any commit"
            if time.time() > deadline:
                pytest.fail("no round committed in time")
            done = _manifests(storage)
            for (tid, k), man in sorted(done.items()):
                rounds = {kk for (t, kk) in done if t == tid}
                if rounds != {0, 1, 2}:  # still mid-lineage
                    victim = tid, man["metrics"]["node"].rsplit(":", 1)[1]
                    break
            time.sleep(0.05)
        tid, victim_node = victim
        (node,) = [w for w in workers if label_of(w) == victim_node]
        kill_machine(cluster, node)
        survivors = {label_of(w) for w in workers if w is not node}
        before = {k: m["manifest_sha256"] for k, m in _manifests(storage).items()}
        victim_rounds = {k for (t, k) in before if t == tid}
        assert victim_rounds != {0, 1, 2}, "the trial finished before its node was killed"
        rc = p.wait(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        log.seek(0)
        out = log.read()
        log.close()
    assert rc == 0, out

    after = _manifests(storage)
    assert {k: after[k]["manifest_sha256"] for k in before} == before, "a committed round was redone"
    df = pd.read_parquet(storage / "tiny" / "results")
    assert len(df) == 2 * 3 and not df.duplicated(["trial_id", "round"]).any()
    mine = df[df.trial_id == tid].set_index("round")
    on_victim = {k for k in mine.index if node_ids([mine.loc[k, "node"]]) == {victim_node}}
    assert victim_rounds == on_victim  # nothing committed from the dead machine
    redone = sorted(set(mine.index) - on_victim)
    assert redone and redone[0] == max(on_victim) + 1  # continues where it stopped
    assert node_ids(mine.loc[redone, "node"]) <= survivors  # ...on a node that is alive
    assert node_ids(df["node"]) <= {label_of(w) for w in workers}
    assert (df["gpu_ids"] == "0").all()
    assert not os.path.exists(storage / "tiny" / "trials" / tid / "FAILED.json")


def test_driver_waits_for_a_gpu_node_to_join(cluster, tmp_path):
    """On a cluster, a trial no node fits yet is waited for (nodes joining, or
    the autoscaler, which is asked for it), then it runs; with no wait it is
    one line and exit 2, as locally."""
    (tmp_path / "experiments.yaml").write_text(
        GPU_YAML.replace("[0.1, 0.2]", "[0.1]").replace("[none, basic]", "[none]"))
    r = cli("run", "-e", "tiny", "--address", cluster.address, "--wait-for-nodes", "0", cwd=tmp_path,
            timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "gpu=1" in r.stderr, r.stderr
    assert not (tmp_path / "runs" / "tiny" / "trials").exists()

    env = {**os.environ, **RUN_ENV}
    p = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "-e", "tiny", "--address", cluster.address,
                          "--wait-for-nodes", "120"], cwd=tmp_path, env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line)
            if "waiting up to" in line:
                break
        assert any("waiting up to" in l for l in lines), "".join(lines)
        cluster.add_workers(1)  # the node the trial needs arrives late
        out = "".join(lines) + p.communicate(timeout=240)[0]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, out[-3000:]
    df = pd.read_parquet(tmp_path / "runs" / "tiny" / "results")
    assert len(df) == 3 and (df["gpu_ids"] == "0").all()
