"""The sweep end to end on a real local Ray (CPU; fake GPUs through Ray's
own resource accounting)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from orchestrator import report as REP
from orchestrator import results as R
from orchestrator.report import write_report
from tests.helpers import RUN_ENV, TINY_YAML, assert_png, cli, manifests, table, uninterrupted
from workers.store import SweepStore

pytestmark = pytest.mark.ray


CONTRACT_COLUMNS = {"sweep", "trial_id", "dataset", "fraction", "augmentation", "method", "arch", "seed",
                    "round", "density", "val_acc", "test_acc", "train_acc", "epochs", "wall_s", "node",
                    "gpu_ids", "started_at", "finished_at", "checkpoint_uri", "schema_version"}


METRICS = ["density", "val_acc", "test_acc", "train_acc"]


def test_sweep_end_to_end(reference):
    d, r = reference
    df = table(d / "runs")
    assert CONTRACT_COLUMNS <= set(df.columns)
    assert len(df) == 4 * 3 and not df.duplicated(["trial_id", "round"]).any()
    assert sorted(df["round"].unique()) == [0, 1, 2]
    assert (df.loc[df["round"] == 0, "density"] == 1.0).all()
    assert df.loc[df["round"] == 2, "density"].between(0.639, 0.641).all()
    assert df[["val_acc", "test_acc", "train_acc"]].stack().between(0, 1).all()
    assert df["node"].str.len().gt(0).all() and (df["started_at"] <= df["finished_at"]).all()
    assert "Dense (round 0) vs winning ticket" in r.stdout
    layers = pd.read_parquet(d / "runs" / "tiny" / "layers")
    assert {"trial_id", "round", "layer", "density", "numel"} <= set(layers.columns)
    assert len(layers) == 12 * 20  # 20 conv layers in ResNet-18

    s = cli("status", "-e", "tiny", "--json", cwd=d)
    st = json.loads(s.stdout)
    assert st["trials"] == {"total": 4, "done": 4, "running": 0, "pending": 0, "failed": 0}
    assert st["rounds"] == {"committed": 12, "total": 12}

    q = cli("query", "-e", "tiny", "--format", "json", cwd=d)
    rows = json.loads(q.stdout)
    assert isinstance(rows, list) and len(rows) == 12 and "val_acc" in rows[0]
    w = json.loads(cli("query", "-e", "tiny", "--winning-tickets", "--format", "json", cwd=d).stdout)
    assert len(w) == 4
    for row in w:
        mine = df[df.trial_id == row["trial_id"]]
        assert row["val_acc"] == mine["val_acc"].max()
    c = json.loads(cli("query", "-e", "tiny", "--compare", "--format", "json", cwd=d).stdout)
    assert len(c) == 4 and all("gain" in x for x in c)
    sql = cli("query", "-e", "tiny", "--sql", "select count(*) as n from results", "--format", "csv", cwd=d)
    assert sql.stdout.split() == ["n", "12"]


def test_rerun_of_finished_sweep_does_nothing(reference):
    d, _ = reference
    before = manifests(d / "runs")
    r = cli("run", "-e", "tiny", "--num-cpus", "2", cwd=d)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert manifests(d / "runs") == before


def test_extended_grid_runs_only_new_trials(reference, tmp_path, shared_ray):
    d, _ = reference
    shutil.copytree(d / "runs", tmp_path / "runs")
    (tmp_path / "experiments.yaml").write_text(TINY_YAML.replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
    before = manifests(tmp_path / "runs")
    r = cli("run", "-e", "tiny", *shared_ray, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 trials, 4 already done" in r.stdout
    after = manifests(tmp_path / "runs")
    assert {k: after[k] for k in before} == before  # old rounds untouched
    assert len(after) == 18
    df = table(tmp_path / "runs")
    assert len(df) == 18 and not df.duplicated(["trial_id", "round"]).any()


@pytest.mark.parametrize("fused", [False, True], ids=["one lineage per trial", "fused groups"])
def test_gpu_pinning_with_fake_gpus(tmp_path, shared_ray, fused):
    """Tune trials of gpu: 1 on a Ray with 2 (fake) GPUs: each on one GPU id for
    its whole life, never more than 2 at once, and with fusion (runtime.fuse
    defaults to 8 for a GPU) the 4 same-shape lineages make 2 groups, one per
    GPU, not one group that leaves a GPU idle."""
    yaml = TINY_YAML.replace("epochs: 3", "epochs: 2")
    if fused:  # 4 lineages of one shape: one data size, two augmentations, two seeds
        yaml = yaml.replace("fractions: [0.1, 0.2]", "fractions: [0.1]\n    seeds: [0, 1]")
        yaml = yaml.replace("resources: {gpu: 0, cpu: 1}", "resources: {gpu: 1, cpu: 0.5}")
    else:
        yaml = yaml.replace("resources: {gpu: 0, cpu: 1}", "resources: {gpu: 1, cpu: 0.5}\n  runtime: {fuse: 1}")
    (tmp_path / "experiments.yaml").write_text(yaml)
    r = cli("run", "-e", "tiny", *shared_ray, cwd=tmp_path)  # its 2 fake GPUs
    assert r.returncode == 0, r.stdout + r.stderr
    df = table(tmp_path / "runs")
    assert len(df) == 12
    if fused:
        assert "4 lineages fused in 2 groups" in r.stdout + r.stderr
        assert df["fused_with"].notna().all() and df["fused_with"].str.count(",").eq(0).all()  # pairs
        units = df.groupby(df.apply(lambda row: ",".join(sorted([row.trial_id, row.fused_with])), axis=1))
    else:
        assert df["fused_with"].isna().all()
        units = df.groupby("trial_id")
    spans = []
    for _, g in units:
        ids = set(g["gpu_ids"])
        assert len(ids) == 1, ids  # one GPU for the whole lineage (or group)
        (gid,) = ids
        assert gid in {"0", "1"}, gid  # exactly one id, never more
        spans.append((g["started_at"].min(), g["finished_at"].max(), gid))
    assert len(spans) == (2 if fused else 4)
    if fused:
        assert {gid for *_, gid in spans} == {"0", "1"}  # both GPUs trained
    events = sorted([(t0, 1) for t0, _, _ in spans] + [(t1, -1) for _, t1, _ in spans],
                    key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2  # never more than 2 units at once
    for a in spans:
        for b in spans:
            if a is not b and a[0] < b[1] and b[0] < a[1]:
                assert a[2] != b[2]  # units running at the same time hold different GPUs


def test_infeasible_resources_fail_before_anything(tmp_path):
    (tmp_path / "experiments.yaml").write_text(TINY_YAML.replace("gpu: 0, cpu: 1", "gpu: 1, cpu: 1"))
    r = cli("run", "-e", "tiny", "--num-cpus", "2", "--num-gpus", "0", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "gpu=1" in r.stderr and not (tmp_path / "runs").exists()


def _wait_for_commits(storage, n, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if (storage / "tiny" / "trials").exists() and len(manifests(storage)) >= n:
            return True
        time.sleep(0.2)
    raise AssertionError("no commit in time")


# The tiny sweep with its lineages fused in pairs (none + basic of each data
# size), on the grouped kernels (the default for 8 px images on CPU): a
# fused member's bits then depend on its group's shapes, which a resume must
# keep (workers/group.py: pads), so the reference is an uninterrupted fused sweep.
FUSED_YAML = TINY_YAML.replace("  resources: {gpu: 0, cpu: 1}\n",
                               "  resources: {gpu: 0, cpu: 1}\n  runtime: {fuse: 2, fuse_conv: grouped}\n")


def _files(storage, name):
    """{(trial, round): sha256 of that round's `name`} from the manifests."""
    st = SweepStore(str(storage), "tiny")
    return {(t, k): m["files"][name] for t in st.trial_ids() for k, m in st.lineage(t).manifests().items()}


def test_fused_sweep_killed_and_resumed_equals_the_uninterrupted_fused_sweep(shared_ray, tmp_path):
    """SIGKILL of the driver's process group (delivered: checked by its exit
    status), then SIGTERM (exit 130 while rounds remain), then the same
    command again (on another Ray: what resumes is in storage): every
    member's weights and masks equal an uninterrupted fused sweep's bit for
    bit, so do the rows, and no round is trained twice. (The solo sweep's
    kills: test_chaos.py.)"""
    ref_dir, _ = uninterrupted(tmp_path / "ref", FUSED_YAML, ray=shared_ray)
    (tmp_path / "experiments.yaml").write_text(FUSED_YAML)
    storage = tmp_path / "runs"
    env = {**os.environ, **RUN_ENV}
    seed = int(os.environ.get("LTH_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"kill seed {seed} (replay with LTH_KILL_SEED={seed})")
    cmd = [sys.executable, "-m", "orchestrator", "run", "-e", "tiny", "--num-cpus", "2"]
    snapshot = {}
    for sig, after in ((signal.SIGKILL, 1 + rng.randrange(2)), (signal.SIGTERM, 4 + rng.randrange(3))):
        base = len(manifests(storage)) if (storage / "tiny" / "trials").exists() else 0
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Signal this run after it has committed something itself, not while
        # the interpreter is still starting (commits of the last run count no more).
        reached = _wait_for_commits(storage, max(after, base + 1), p)
        if reached:
            time.sleep(rng.random() * 0.5)
            if sig == signal.SIGKILL:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=120)[0]
        if sig == signal.SIGKILL:
            assert reached and p.returncode == -signal.SIGKILL, (p.returncode, out)
        elif reached and len(manifests(storage)) < 12:
            assert p.returncode == 130 and "Re-run the same command" in out, (p.returncode, out)
        assert "Traceback" not in out
        now = manifests(storage)
        assert {k: now[k] for k in snapshot} == snapshot, "a committed round was trained again"
        snapshot = now
        time.sleep(1)
    r = cli("run", "-e", "tiny", *shared_ray, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    final = manifests(storage)
    assert {k: final[k] for k in snapshot} == snapshot
    for name in ("weights.sparse.safetensors", "mask.safetensors"):
        got, want = _files(storage, name), _files(ref_dir / "runs", name)
        assert len(got) == 12 and got == want, name  # every member, every round: bit for bit
    got = table(storage).sort_values(["trial_id", "round"]).reset_index(drop=True)
    ref = table(ref_dir / "runs").sort_values(["trial_id", "round"]).reset_index(drop=True)
    assert not got.duplicated(["trial_id", "round"]).any()
    assert got[["trial_id", "round"]].equals(ref[["trial_id", "round"]])
    assert got[METRICS].equals(ref[METRICS])
    assert got["fused_with"].notna().all() and ref["fused_with"].notna().all()


def test_missing_dataset_is_one_clear_error(tmp_path):
    (tmp_path / "experiments.yaml").write_text(
        TINY_YAML.replace("[digits]", "[cifar10]") + "    data_root: " + str(tmp_path / "nodata") + "\n")
    # No network here: the real download path fails fast and says where the files belong.
    r = cli("run", "-e", "tiny", "--num-cpus", "2", cwd=tmp_path, timeout=180)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(tmp_path / "nodata") in r.stderr and not (tmp_path / "runs").exists()


INDEPENDENT = ["imp", "random_prune", "cosine_loss", "tvmf_loss", "full_conv", "harmonic"]


ALL = INDEPENDENT + ["same_layer_sparse", "small_dense"]


@pytest.mark.ray
def test_every_method_end_to_end_through_the_orchestrator(tmp_path, shared_ray):
    yaml = (TINY_YAML.replace("fractions: [0.1, 0.2]", "fractions: [0.1]")
            .replace("augmentations: [none, basic]", "augmentations: [basic]")
            .replace("methods: [imp]", f"methods: [{', '.join(ALL)}]")
            .replace("epochs: 3", "epochs: 2").replace("rounds: 2", "rounds: 1")
            + "    analysis: {cka: true, probe: [digits]}\n")
    (tmp_path / "experiments.yaml").write_text(yaml)
    r = cli("run", "-e", "tiny", *shared_ray, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    df = table(tmp_path / "runs")
    assert sorted(df["method"].unique()) == sorted(ALL)
    assert len(df) == len(ALL) * 2 and not df.duplicated(["trial_id", "round"]).any()
    assert all(sorted(g) == [0, 1] for _, g in df.groupby("method")["round"])
    # The dependent trials ran after their parent: they start after it finished.
    by = df.set_index(["method", "round"])
    imp_done = by.loc[("imp", 1), "finished_at"]
    for m in ("same_layer_sparse", "small_dense"):
        assert by.loc[(m, 1), "started_at"] >= imp_done
        assert by.loc[(m, 0), "test_acc"] == by.loc[("imp", 0), "test_acc"]  # the shared dense round
    assert "starts: what it is built from has finished" in r.stdout
    # The evaluations ran inside the trials and reached their tables.
    from orchestrator import results as R
    st = SweepStore(str(tmp_path / "runs"), "tiny")
    cka = R.to_pandas(R.load_table(st, "cka"))
    probe = R.to_pandas(R.load_table(st, "probe"))
    assert set(cka["trial_id"]) == set(df["trial_id"]) == set(probe["trial_id"])
    again = cli("run", "-e", "tiny", *shared_ray, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.ray
def test_report_of_a_real_tiny_sweep(reference, tmp_path):
    d, _ = reference
    st = SweepStore(str(d / "runs"), "tiny")
    paths = write_report(st, str(tmp_path / "rep"))
    names = sorted(os.path.basename(p) for p in paths if p.endswith(".png"))
    assert names == ["fig1_accuracy_vs_density.png", "fig2_data_efficiency.png", "fig2b_gain.png",
                     "fig5_layer_density.png"]
    for p in paths:
        if p.endswith(".png"):
            assert_png(p)
    # Table 1 against an independent pandas reading of the results: aug* by round-0 val_acc.
    df = R.load_results(st)
    t = REP.methods_table(REP.trial_summary(df)).set_index("size")
    for fraction, size in ((0.1, "10%"), (0.2, "20%")):
        dense = df[(df["fraction"] == fraction) & (df["round"] == 0)].sort_values(
            ["val_acc", "augmentation"], ascending=[False, True]).iloc[0]
        assert (t.loc[size, "dense_aug"], t.loc[size, "dense_test_acc_mean"]) == (dense["augmentation"],
                                                                                 pytest.approx(dense["test_acc"]))
        assert t.loc[size, "ticket_test_acc_mean"] > 0
