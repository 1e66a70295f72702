"""Crash consistency: kills at random moments, worker deaths, two drivers,
full and read-only storage. Every scenario must end with the same table as
an uninterrupted run: same (trial_id, round) rows, the same metrics on CPU,
no duplicate, nothing missing, no committed round trained twice.

LTH_CHAOS_KILLS=N raises the number of driver kills (default 5) for a soak;
LTH_KILL_SEED=S replays a failing run (the seed is printed)."""
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.helpers import RUN_ENV, TINY_YAML, cli, manifests, table
from workers.store import SweepStore

pytestmark = pytest.mark.ray


ENV = {**os.environ, **RUN_ENV}


CMD = [sys.executable, "-m", "orchestrator", "run", "-e", "tiny", "--num-cpus", "2"]


METRICS = ["density", "val_acc", "test_acc", "train_acc"]


def start(cwd, *extra):
    return subprocess.Popen(CMD + list(extra), cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def commits(storage):
    return len(manifests(storage)) if (storage / "tiny" / "trials").exists() else 0


def wait_until(pred, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    raise AssertionError("timed out")


def assert_same_as_reference(storage, reference):
    got = table(storage).sort_values(["trial_id", "round"]).reset_index(drop=True)
    ref = table(reference[0] / "runs").sort_values(["trial_id", "round"]).reset_index(drop=True)
    assert not got.duplicated(["trial_id", "round"]).any(), "duplicate rows"
    assert got[["trial_id", "round"]].equals(ref[["trial_id", "round"]]), "missing or extra rows"
    assert got[METRICS].equals(ref[METRICS]), "metrics differ from the uninterrupted run"


def assert_committed_unchanged(before, after):
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, f"committed rounds trained again: {changed}"


def test_driver_killed_at_random_moments(tmp_path, reference, shared_ray):
    (tmp_path / "experiments.yaml").write_text(TINY_YAML)
    storage = tmp_path / "runs"
    seed = int(os.environ.get("LTH_KILL_SEED", random.randrange(10**6)))
    kills = int(os.environ.get("LTH_CHAOS_KILLS", "5"))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed} (replay: LTH_KILL_SEED={seed}), {kills} SIGKILLs, then SIGTERM, then Ctrl-C")
    snapshot = {}
    plan = [signal.SIGKILL] * kills + [signal.SIGTERM, signal.SIGINT]
    for i, sig in enumerate(plan):
        p = start(tmp_path)
        n0 = commits(storage)
        if rng.random() < 0.3:
            time.sleep(rng.uniform(0.5, 8))  # anywhere: start-up, mid-round, mid-commit
        else:
            wait_until(lambda: commits(storage) > n0, p)
            time.sleep(rng.uniform(0, 1.0))
        if p.poll() is None:
            os.killpg(p.pid, sig) if sig == signal.SIGKILL else p.send_signal(sig)
        out = p.communicate(timeout=120)[0]
        if sig == signal.SIGTERM and p.returncode == -signal.SIGTERM and not out:
            pass  # it came before the interpreter had started the CLI: nothing to stop
        elif sig != signal.SIGKILL and p.returncode != 0:  # a graceful stop
            assert p.returncode == 130 and "Re-run the same command" in out, out[-3000:]
            assert "Traceback" not in out, out[-3000:]
        print(f"  kill {i + 1}: {sig.name} -> exit {p.returncode}, rounds committed {commits(storage)}/12")
        now = manifests(storage) if commits(storage) else {}
        assert_committed_unchanged(snapshot, now)
        snapshot = now
    # The last run finishes on another Ray (the tests' shared one): what a
    # resume needs is in storage, not in the Ray that was killed.
    r = cli("run", "-e", "tiny", *shared_ray, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_committed_unchanged(snapshot, manifests(storage))
    assert_same_as_reference(storage, reference)


def test_worker_killed_mid_round_and_second_driver_refused(tmp_path, reference):
    (tmp_path / "experiments.yaml").write_text(TINY_YAML)
    storage = tmp_path / "runs"
    p = start(tmp_path)
    assert wait_until(lambda: commits(storage) >= 1, p)
    # Freeze the driver (it keeps its lock; its trials keep training) so the
    # steps below cannot race the tiny sweep's end.
    os.kill(p.pid, signal.SIGSTOP)
    try:
        snapshot = manifests(storage)
        # Kill a trial's worker process (a Tune actor), which is mid-round.
        pids = subprocess.run(["pgrep", "-f", "ImplicitFunc"], capture_output=True, text=True).stdout.split()
        assert pids, "no trial worker found"
        os.kill(int(pids[0]), signal.SIGKILL)
        # A second driver on the same sweep is refused, not raced.
        second = cli("run", "-e", "tiny", "--num-cpus", "2", cwd=tmp_path, timeout=120)
        assert second.returncode == 2 and "another driver" in second.stderr, second.stderr[-2000:]
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        os.kill(p.pid, signal.SIGCONT)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out[-3000:]  # Tune retried the trial; it resumed from storage
    assert_committed_unchanged(snapshot, manifests(storage))
    assert_same_as_reference(storage, reference)


ONE_LINEAGE_YAML = TINY_YAML.replace("fractions: [0.1, 0.2]", "fractions: [0.1]").replace(
    "augmentations: [none, basic]", "augmentations: [none]")


@pytest.mark.parametrize("delay", [0.0, 0.5, 1.5])
def test_a_sigterm_after_the_last_commit_or_during_ray_s_shutdown_exits_0_or_130(tmp_path, delay):
    """The moments the random kills rarely hit: the last round is committed and the
    driver tears down (the results table, Ray's shutdown, which resets SIGTERM to
    the default in C). A scheduler acts on the exit status: never -15."""
    (tmp_path / "experiments.yaml").write_text(ONE_LINEAGE_YAML)
    storage = tmp_path / "runs"
    p = start(tmp_path)
    wait_until(lambda: commits(storage) >= 3, p)
    time.sleep(delay)
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    print(f"SIGTERM {delay}s after the last commit -> exit {p.returncode}")
    assert p.returncode in (0, 130), out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    r = cli("run", "-e", "tiny", "--num-cpus", "2", cwd=tmp_path)  # nothing to train: no Ray started
    assert r.returncode == 0 and "nothing to do" in r.stdout + r.stderr, r.stderr[-2000:]
    assert len(table(storage)) == 3


@pytest.fixture
def small_mount(tmp_path):
    """A real, small filesystem (tmpfs) we can fill up or make read-only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def verify_all(storage, sweep="tiny"):
    """Every committed round's files still match their manifest."""
    st = SweepStore(str(storage), sweep)
    n = 0
    for t in st.trial_ids():
        lin = st.lineage(t)
        for k, man in lin.manifests().items():
            lin.load_round(k, list(man["files"]))
            n += 1
    return n


def test_full_storage_clear_error_commits_intact(tmp_path, small_mount, shared_ray):
    (tmp_path / "experiments.yaml").write_text(TINY_YAML)
    r = cli("run", "-e", "tiny", *shared_ray, "--max-failures", "0", "--storage", str(small_mount),
            cwd=tmp_path)
    assert r.returncode != 0
    assert "No space left on device" in r.stdout  # the cause is named, per failed trial
    assert verify_all(small_mount) >= 1  # what was committed before the disk filled is intact
    if (small_mount / "tiny" / "results").exists():
        pd.read_parquet(small_mount / "tiny" / "results")  # and the table stays readable


def test_read_only_storage_clear_error(tmp_path, small_mount, shared_ray):
    (tmp_path / "experiments.yaml").write_text(TINY_YAML.replace("[0.1, 0.2]", "[0.1]").replace(
        "[none, basic]", "[none]"))
    r = cli("run", "-e", "tiny", *shared_ray, "--storage", str(small_mount), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = manifests(small_mount)
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    (tmp_path / "experiments.yaml").write_text(TINY_YAML)  # more trials to run
    r = cli("run", "-e", "tiny", "--num-cpus", "2", "--storage", str(small_mount), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Read-only" in lines[0], r.stderr
    assert manifests(small_mount) == before and verify_all(small_mount) == len(before)
