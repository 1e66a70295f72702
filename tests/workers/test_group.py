"""Fused groups of lineages (workers/group.py): equal to solo, exact on resume, a failing member isolated."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load

from workers import pruning as P
from workers.group import GroupFailed, fuse_key, run_group
from workers.lineage import run_lineage
from workers.methods import base as method_base
from workers.round import RoundRun
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore

CPU = RunOptions(device="cpu")
TIMINGS = {"wall_s", "images_per_s", "started_at", "finished_at", "checkpoint_uri", "node", "history"}
HOW = {"numerics", "fuse_check", "fused_with"}  # how a round trained (with whom), not what it computed


@pytest.fixture(autouse=True)
def one_thread():
    """Bits that do not depend on the machine's core count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spec(seed, aug="basic", rounds=3, epochs=3, method="imp"):
    return TrialSpec(DataSpec("digits", fraction=0.2, augmentation=aug), model=ModelSpec(width=0.125),
                     train=TrainSpec(epochs=epochs, batch_size=40, lr=0.05),
                     prune=PruneSpec(method=method, rounds=rounds, rewind_epoch=1), seed=seed)


def members(tmp_path, specs, sweep="g"):
    st = SweepStore(str(tmp_path), sweep)
    return [(s, st.lineage(s.trial_id)) for s in specs]


def stable(metrics):
    return [{k: v for k, v in m.items() if k not in TIMINGS | HOW} for m in metrics]


def masks(lin, k):
    return P.unpack_masks(st_load(lin.load_round(k, ["mask.safetensors"])["mask.safetensors"]))


def mismatch(a, b) -> float:
    return sum(int((a[n] != b[n]).sum()) for n in a) / sum(m.numel() for m in a.values())


def test_what_fuses_is_what_has_the_same_shapes():
    assert fuse_key(spec(0, "none")) == fuse_key(spec(1, "contrast")) == fuse_key(spec(2, method="random_prune"))
    assert fuse_key(spec(0)) != fuse_key(spec(0, epochs=4)) != fuse_key(spec(0, method="harmonic"))
    assert fuse_key(spec(0, method="small_dense")) is None  # built from another lineage's rounds


def test_a_loop_fused_group_computes_the_solo_lineages_bit_for_bit(tmp_path):
    """With each member's own conv kernels ("loop") and one input layout, fusing
    changes nothing but the speed: metrics, masks and weights equal the solo runs."""
    specs = [spec(seed) for seed in range(3)]
    solo = {s.trial_id: run_lineage(s, lin, CPU) for s, lin in members(tmp_path, specs, "solo")}
    group = run_group(members(tmp_path, specs), RunOptions(device="cpu", fuse_conv="loop"))
    for s, lin in members(tmp_path, specs):
        others = sorted(t.trial_id for t in specs if t is not s)
        assert [m.pop("fused_with") for m in group[s.trial_id]] == [others] * 4
        assert [(m["numerics"]["fused"], m["numerics"]["conv"]) for m in group[s.trial_id]] == [(3, "loop")] * 4
        assert [(m["numerics"]["fused"], m["numerics"]["conv"]) for m in solo[s.trial_id]] == [(1, "solo")] * 4
        assert all(m["fuse_check"]["passed"] for m in group[s.trial_id])
        assert stable(group[s.trial_id]) == stable(solo[s.trial_id])
        for k in range(4):
            assert mismatch(masks(SweepStore(str(tmp_path), "solo").lineage(s.trial_id), k), masks(lin, k)) == 0


def test_a_grouped_fused_lineage_in_float64_gives_the_solo_masks(tmp_path):
    """Three rounds of three lineages on the grouped kernels, in float64 (where
    another summation order costs ~1e-16, not float32's chaos in these tiny
    networks): every round's mask equals the solo lineage's, entry for entry,
    and so does every accuracy."""
    specs = [spec(seed, aug) for seed, aug in enumerate(["none", "basic", "contrast"])]
    f64 = dict(device="cpu", float64=True)
    group = run_group(members(tmp_path, specs), RunOptions(fuse_conv="grouped", **f64))
    for s, lin in members(tmp_path, specs, "solo"):
        solo = run_lineage(s, lin, RunOptions(**f64))
        assert [m["numerics"]["conv"] for m in group[s.trial_id]] == ["grouped"] * 4
        assert {m["numerics"]["dtype"] for m in group[s.trial_id] + solo} == {"float64"}
        assert stable(group[s.trial_id]) == stable(solo)
    for s in specs:
        for k in range(4):
            assert mismatch(masks(SweepStore(str(tmp_path), "solo").lineage(s.trial_id), k),
                            masks(SweepStore(str(tmp_path), "g").lineage(s.trial_id), k)) == 0, (s.trial_id, k)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("where", ["between the members' commits", "between the members' checkpoints"])
def test_a_killed_group_resumes_to_the_uninterrupted_bits(tmp_path, monkeypatch, where):
    specs = [spec(seed, aug) for seed, aug in enumerate(["none", "basic", "contrast"])]
    opts = RunOptions(device="cpu", checkpoint_every=1)
    ref = run_group(members(tmp_path, specs, "ref"), opts)
    victim = specs[1].trial_id
    if where == "between the members' commits":
        def on_round(m):
            if m["trial_id"] == specs[0].trial_id and m["round"] == 1:
                raise Killed  # the first member committed round 1, the others not
        with pytest.raises(Killed):
            run_group(members(tmp_path, specs), opts, on_round=on_round)
    else:
        real = RoundRun.checkpoint

        def checkpoint(self):
            if self.ctx.store.trial_id == victim and self.k == 1 and self.epoch == 2:
                raise Killed  # the first member saved epoch 2 of round 1, this one nothing of round 1 yet
            real(self)
        monkeypatch.setattr(RoundRun, "checkpoint", checkpoint)
        with pytest.raises(Killed):
            run_group(members(tmp_path, specs), opts)
        monkeypatch.undo()
    lins = [lin for _, lin in members(tmp_path, specs)]
    if where == "between the members' commits":
        assert [lin.committed_prefix() for lin in lins] == [2, 1, 1]
    else:  # the members resume from different epochs of round 1: 2, and its start (the rewind epoch, 1)
        assert lins[0].load_partial(1)[0] == 2 and lins[1].load_partial(1) is None
    got = run_group(members(tmp_path, specs), opts)
    for s in specs:
        assert stable(got[s.trial_id]) == stable(ref[s.trial_id]), s.trial_id
        for k in range(4):
            assert mismatch(masks(SweepStore(str(tmp_path), "ref").lineage(s.trial_id), k),
                            masks(SweepStore(str(tmp_path), "g").lineage(s.trial_id), k)) == 0


def test_a_member_that_fails_leaves_the_others_and_their_rounds_intact(tmp_path, monkeypatch):
    specs = [spec(seed, rounds=2) for seed in range(3)]
    bad = specs[1].trial_id
    real = RoundRun.after_epoch

    def after_epoch(self, epoch, ep):
        if self.ctx.store.trial_id == bad and self.k == 1:
            raise OSError("its storage went away")
        real(self, epoch, ep)
    monkeypatch.setattr(RoundRun, "after_epoch", after_epoch)
    with pytest.raises(GroupFailed, match=f"1 of 3 .*{bad}: OSError: its storage went away"):
        run_group(members(tmp_path, specs), CPU)
    monkeypatch.undo()
    done = {s.trial_id: lin.committed_prefix() for s, lin in members(tmp_path, specs)}
    assert done == {specs[0].trial_id: 3, bad: 1, specs[2].trial_id: 3}
    assert "its storage went away" in members(tmp_path, specs)[1][1].read_marker("FAILED.json")["error"]
    digests = {(s.trial_id, k): m["manifest_sha256"] for s, lin in members(tmp_path, specs)
               for k, m in lin.manifests().items()}
    # The retry finishes the failed member and retrains nothing that was committed.
    got = run_group(members(tmp_path, specs), CPU)
    assert all(len(v) == 3 for v in got.values())
    again = {(s.trial_id, k): m["manifest_sha256"] for s, lin in members(tmp_path, specs)
             for k, m in lin.manifests().items()}
    assert {k: again[k] for k in digests} == digests


def _inject(monkeypatch, fault: str, victim: str, round_k: int = 1, epoch: int = 2) -> None:
    """Make one member fail inside a fused epoch: its augmentation raises, its
    loss raises, or its loss is NaN (from `epoch` of `round_k` on)."""
    from workers import train as TR
    if fault == "its augmentation raises":
        real = TR.EpochStream.batch

        def batch(self, b):
            if (self.trial_id, self.round) == (victim, round_k) and b > 0:
                raise RuntimeError("augmentation blew up")
            return real(self, b)
        monkeypatch.setattr(TR.EpochStream, "batch", batch)
        return
    real_init = TR.Trainer.__init__

    def init(self, spec, *a, **k):
        real_init(self, spec, *a, **k)
        if spec.trial_id == victim and self.model is not None:
            loss = self.loss
            if fault == "its loss raises":
                self.loss = lambda out, y, n: (_ for _ in ()).throw(ValueError("loss blew up"))
            else:
                self.loss = lambda out, y, n: loss(out, y, n) * float("nan")
    # Only the victim's round `round_k`: its RoundRun builds the Trainer.
    real_run = RoundRun.__init__

    def run_init(self, ctx, k, start):
        if k == round_k:
            monkeypatch.setattr(TR.Trainer, "__init__", init)
        try:
            real_run(self, ctx, k, start)
        finally:
            monkeypatch.setattr(TR.Trainer, "__init__", real_init)
    monkeypatch.setattr(RoundRun, "__init__", run_init)


@pytest.mark.parametrize("fault", ["its augmentation raises", "its loss raises", "its loss is NaN"])
def test_a_member_failing_inside_a_fused_epoch_is_its_own_failure(tmp_path, monkeypatch, fault):
    """The failing member leaves with its FAILED marker; the others finish with
    the very bits of a group where nothing failed (its slot keeps the fused
    program's shapes), and a retry trains only the failed member."""
    specs = [spec(seed, aug, rounds=2) for seed, aug in enumerate(["none", "basic", "contrast"])]
    ref = run_group(members(tmp_path, specs, "ref"), CPU)
    bad = specs[1].trial_id
    _inject(monkeypatch, fault, bad)
    with pytest.raises(GroupFailed, match=f"1 of 3 .*{bad}"):
        run_group(members(tmp_path, specs), CPU)
    monkeypatch.undo()
    lins = dict((s.trial_id, lin) for s, lin in members(tmp_path, specs))
    assert {t: lin.committed_prefix() for t, lin in lins.items()} == {
        specs[0].trial_id: 3, bad: 1, specs[2].trial_id: 3}
    cause = {"its augmentation raises": "augmentation blew up", "its loss raises": "loss blew up",
             "its loss is NaN": "NonFiniteLoss"}[fault]
    assert cause in lins[bad].read_marker("FAILED.json")["error"]
    for s in (specs[0], specs[2]):
        assert stable(lins[s.trial_id].read_manifest(k)["metrics"] for k in range(3)) == stable(ref[s.trial_id])
    trained = []
    real = RoundRun.__init__
    monkeypatch.setattr(RoundRun, "__init__", lambda self, ctx, k, start: (
        trained.append(ctx.store.trial_id), real(self, ctx, k, start))[1])
    got = run_group(members(tmp_path, specs), CPU)
    assert set(trained) == {bad} and all(len(v) == 3 for v in got.values())
    assert stable(got[bad]) == stable(ref[bad])  # the retry computes what it would have


@pytest.mark.parametrize("where", ["in an epoch", "while the fused program is built"])
def test_out_of_memory_splits_the_group_down_to_what_fits(tmp_path, monkeypatch, caplog, where):
    """Three fused lineages that do not fit (no program of more than two fits):
    the round goes on in a group of two and one alone, from the last epoch
    each had finished; nobody fails."""
    from workers.fused import FusedTrainer
    specs = [spec(seed, rounds=1) for seed in range(3)]
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if where == "in an epoch":
        real = FusedTrainer.step

        def step(self, loss):
            if self.K > 2:
                raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")
            real(self, loss)
        monkeypatch.setattr(FusedTrainer, "step", step)
    else:
        real = FusedTrainer.__init__

        def init(self, trainers, conv="auto"):
            if len(trainers) > 2:
                raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")
            real(self, trainers, conv)
        monkeypatch.setattr(FusedTrainer, "__init__", init)
    with caplog.at_level("WARNING"):
        got = run_group(members(tmp_path, specs), CPU)
    assert "out of memory with 3 lineages fused" in caplog.text and "splitting into groups of 2" in caplog.text
    widths = sorted(m["numerics"]["fused"] for v in got.values() for m in v)
    assert widths == [1, 1, 2, 2, 2, 2]
    for s, lin in members(tmp_path, specs):
        assert lin.committed_prefix() == 2 and lin.read_marker("FAILED.json") is None
