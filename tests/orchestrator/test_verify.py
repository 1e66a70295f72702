"""The scrub (orchestrator/verify.py) on real committed lineages: every file of
every committed round re-checked, each damaged one named with its trial and
round; `redo_corrupt` un-commits a damaged lineage from its first corrupt
round and touches nothing else, and the next run retrains only what it
un-committed. The CLI verbs around it (`verify`, `run --verify`) are in
tests/integration/test_verbs.py."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from orchestrator.verify import format_verify, redo_corrupt, verify_sweep
from workers import checkpoint as CK
from workers.lineage import run_lineage
from workers.round import RoundRun
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore

SPECS = [TrialSpec(DataSpec("digits", fraction=0.1), model=ModelSpec(width=0.125),
                   train=TrainSpec(epochs=2, batch_size=40, lr=0.05),
                   prune=PruneSpec(rounds=2, rewind_epoch=1), seed=seed) for seed in (0, 1)]
A, B = sorted(s.trial_id for s in SPECS)
CPU = RunOptions(device="cpu")
TIMINGS = {"wall_s", "images_per_s", "started_at", "finished_at", "checkpoint_uri"}


@pytest.fixture(autouse=True)
def one_thread():
    """Bits that do not depend on the core count, and no oversubscription of a
    shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two finished 3-round lineages, trained once for the whole module."""
    root = tmp_path_factory.mktemp("built")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep = SweepStore(str(root), "s")
        metrics = {s.trial_id: run_lineage(s, sweep.lineage(s.trial_id), CPU) for s in SPECS}
    finally:
        torch.set_num_threads(n)
    return root, metrics


@pytest.fixture
def sweep(built, tmp_path):
    """A private copy of the built sweep, for a test to damage."""
    shutil.copytree(built[0], tmp_path / "store")
    return SweepStore(str(tmp_path / "store"), "s")


def snapshot(sweep) -> dict[str, bytes]:
    """Every file of the sweep folder by its path inside it."""
    out = {}
    for d, _, names in os.walk(sweep.dir):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, sweep.dir)] = open(p, "rb").read()
    return out


def flip(path, at=None):
    data = bytearray(open(path, "rb").read())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_a_clean_sweep_verifies_every_file_of_every_round(sweep):
    out = verify_sweep(sweep)
    lins = [sweep.lineage(t) for t in (A, B)]
    files = sum(1 + len(m["files"]) for lin in lins for m in lin.manifests().values())
    assert (out["sweep"], out["trials"], out["rounds"], out["files"], out["corrupt"]) == ("s", 2, 6, files, [])
    assert files >= 6 * 5  # weights, mask, predictions, metrics.json and the manifest per round, at least
    assert all("predictions.safetensors" in m["files"] for lin in lins for m in lin.manifests().values())
    text = format_verify(out)
    assert text.startswith("sweep s: 2 trials, 6 committed rounds, ") and text.endswith("every file verifies")
    assert f"{files} files checked" in text


def test_each_damaged_file_is_named_with_its_trial_round_and_problem(sweep):
    a, b = sweep.lineage(A), sweep.lineage(B)
    flip(f"{a.round_dir(1)}/{CK.WEIGHTS}")
    mask = f"{a.round_dir(2)}/mask.safetensors"
    with open(mask, "r+b") as f:
        f.truncate(os.path.getsize(mask) - 3)
    size = os.path.getsize(mask)
    os.remove(f"{b.round_dir(0)}/metrics.json")
    flip(f"{b.round_dir(1)}/predictions.safetensors", at=-1)  # one image's predicted class
    man = f"{b.round_dir(2)}/MANIFEST.json"
    raw = open(man, "rb").read()
    open(man, "wb").write(raw.replace(b'"round": 2', b'"round": 3', 1))  # valid JSON, edited
    out = verify_sweep(sweep)
    assert [(c["trial_id"], c["round"], c["file"], c["problem"]) for c in out["corrupt"]] == [
        (A, 1, CK.WEIGHTS, "fails its sha256 check"),
        (A, 2, "mask.safetensors", f"{size} bytes, the manifest says {size + 3}"),
        (B, 0, "metrics.json", "missing"),
        (B, 1, "predictions.safetensors", "fails its sha256 check"),
        (B, 2, "MANIFEST.json", "fails its own sha256 check (torn or edited)"),
    ]
    assert out["rounds"] == 6  # a round with a damaged manifest is still reported, not skipped
    lines = format_verify(out).splitlines()
    assert lines[0] == f"{A} round 1: {CK.WEIGHTS} fails its sha256 check"
    assert lines[2] == f"{B} round 0: metrics.json missing"
    assert lines[3] == f"{B} round 1: predictions.safetensors fails its sha256 check"
    assert lines[-1].endswith("5 corrupt file(s)")


def test_redo_corrupt_uncommits_from_the_first_corrupt_round_only(sweep, capsys):
    before = snapshot(sweep)
    a, b = sweep.lineage(A), sweep.lineage(B)
    flip(f"{a.round_dir(2)}/mask.safetensors")
    flip(f"{a.round_dir(1)}/{CK.WEIGHTS}")  # the first corrupt round of A, not the first named
    flip(f"{b.round_dir(0)}/rewind.safetensors")
    damaged = snapshot(sweep)
    assert redo_corrupt(sweep) == [(A, 1), (B, 0)]
    assert f"verify: {A} round 1 is corrupt" in capsys.readouterr().out
    assert (a.committed_prefix(), b.committed_prefix()) == (1, 0)
    for lin, gone in ((a, (1, 2)), (b, (0, 1, 2))):
        for k in gone:  # renamed, not deleted: what happened stays visible
            names = os.listdir(lin.round_dir(k))
            assert "MANIFEST.json" not in names and any(n.startswith("MANIFEST.invalid-") for n in names)
    after = snapshot(sweep)
    # Round 0 of A, before its first corrupt round, is byte for byte as it was.
    kept = [p for p in before if p.startswith(f"trials/{A}/round_0/")]
    assert kept and all(after[p] == before[p] for p in kept)
    # Apart from the renamed manifests and the lineages' pointers (which now say the
    # shorter prefixes), nothing was written or removed.
    moved = {p for p in damaged if p.endswith("MANIFEST.json") and p not in after}
    assert moved == {f"trials/{A}/round_{k}/MANIFEST.json" for k in (1, 2)} | \
        {f"trials/{B}/round_{k}/MANIFEST.json" for k in (0, 1, 2)}
    pointers = {p for p in after if p.endswith("/COMMITTED.json")}
    assert {p: v for p, v in after.items() if "MANIFEST.invalid-" not in p and p not in pointers} == \
        {p: v for p, v in damaged.items() if p not in moved and p not in pointers}
    assert (a.read_pointer()["prefix"], b.read_pointer()["prefix"]) == (1, 0)
    assert a.read_pointer()["rounds"] == {0: a.read_manifest(0)["manifest_sha256"]}


def test_a_clean_sweep_is_left_exactly_as_it_was(sweep, capsys):
    before = snapshot(sweep)
    assert redo_corrupt(sweep) == []
    assert snapshot(sweep) == before
    assert "0 lineage(s) to redo" in capsys.readouterr().out


def test_the_next_run_retrains_only_what_was_uncommitted(sweep, built, monkeypatch):
    a = sweep.lineage(A)
    flip(f"{a.round_dir(1)}/{CK.WEIGHTS}")
    round0 = {p: v for p, v in snapshot(sweep).items() if p.startswith(f"trials/{A}/round_0/")}
    assert redo_corrupt(sweep) == [(A, 1)]
    trained = []
    real = RoundRun.__init__
    monkeypatch.setattr(RoundRun, "__init__", lambda self, ctx, k, start: (
        trained.append((ctx.store.trial_id, k)), real(self, ctx, k, start))[1])
    spec = next(s for s in SPECS if s.trial_id == A)
    got = run_lineage(spec, a, CPU)
    assert trained == [(A, 1), (A, 2)]
    assert verify_sweep(sweep)["corrupt"] == []
    assert {p: v for p, v in snapshot(sweep).items() if p.startswith(f"trials/{A}/round_0/")} == round0
    # On the CPU the redone rounds are the ones first trained, bit for bit.
    # Round 0 keeps the record of where it was first committed (the sweep was copied here).
    assert [m["checkpoint_uri"] for m in got] == [built[1][A][0]["checkpoint_uri"], a.round_uri(1), a.round_uri(2)]
    assert [{k: v for k, v in m.items() if k not in TIMINGS} for m in got] == \
        [{k: v for k, v in m.items() if k not in TIMINGS} for m in built[1][A]]
    ref = SweepStore(str(built[0]), "s").lineage(A)
    names = [CK.WEIGHTS, "mask.safetensors", "predictions.safetensors"]
    assert all(a.load_round(k, names) == ref.load_round(k, names) for k in (1, 2))


def test_what_was_built_on_a_damaged_round_is_stale_and_redone_to_the_same_bits(tmp_path):
    """same_layer_sparse makes its round k from its imp parent's round k: a
    damaged parent round makes the child's rounds from k stale, and an
    evaluation file that read a redone round too. `redo_corrupt` un-commits
    both lineages from k; rerun, they come back bit for bit."""
    import dataclasses

    from workers.evaluations.base import digests
    sweep = SweepStore(str(tmp_path), "dep")
    parent = SPECS[0]
    child = dataclasses.replace(parent, prune=dataclasses.replace(parent.prune, method="same_layer_sparse"))
    P, C = parent.trial_id, child.trial_id
    for spec in (parent, child):
        run_lineage(spec, sweep.lineage(spec.trial_id), CPU)
    weights = {(t, k): open(f"{sweep.lineage(t).round_dir(k)}/{CK.WEIGHTS}", "rb").read()
               for t in (P, C) for k in range(3)}
    sweep.lineage(P).write_analysis("cka", {"rounds": digests(sweep.lineage(P), [0, 2]), "rows": []})
    mask = f"{sweep.lineage(P).round_dir(1)}/mask.safetensors"
    raw = bytearray(open(mask, "rb").read())
    raw[-1] ^= 0xFF
    open(mask, "wb").write(bytes(raw))

    out = verify_sweep(sweep)
    assert [(c["trial_id"], c["round"]) for c in out["corrupt"]] == [(P, 1)]
    assert {"trial_id": C, "round": 1, "why": f"built from {P} round 1, which is redone"} in out["stale"]
    assert {"trial_id": P, "analysis": "cka", "why": "read round 2, which is redone (from round 1)"} in out["stale"]
    assert len(out["stale"]) == 2 and f"{C} round 1 on: stale" in format_verify(out)

    assert redo_corrupt(sweep) == sorted([(P, 1), (C, 1)])
    assert sweep.lineage(P).committed_prefix() == sweep.lineage(C).committed_prefix() == 1
    for spec in (parent, child):
        run_lineage(spec, sweep.lineage(spec.trial_id), CPU)
    again = {(t, k): open(f"{sweep.lineage(t).round_dir(k)}/{CK.WEIGHTS}", "rb").read()
             for t in (P, C) for k in range(3)}
    assert again == weights
    after = verify_sweep(sweep)
    assert after["corrupt"] == [] and after["stale"] == [
        {"trial_id": P, "analysis": "cka", "why": "the rounds it read were redone since; the next run computes it "
                                                   "again"}]
