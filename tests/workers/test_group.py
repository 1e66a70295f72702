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


def _perturbed_model(monkeypatch):
    """Every network built one float step (1 ulp) away from its initialisation."""
    real = method_base.Method.model

    def model(self, *a, **k):
        m = real(self, *a, **k)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
        return m
    monkeypatch.setattr(method_base.Method, "model", model)


def test_grouped_fusion_strays_from_solo_no_more_than_a_rounding_error_does(tmp_path, monkeypatch):
    """Grouped convolutions add in another order: a few ulps per step, which these
    tiny networks amplify over epochs. The yardstick is solo training itself: the
    same lineages started 1 ulp away. Fused masks after 3 rounds differ from solo
    by no more than that (2x, or half a percent, whichever is larger)."""
    specs = [spec(seed, aug) for seed, aug in enumerate(["none", "basic", "contrast"])]
    run_group(members(tmp_path, specs), RunOptions(device="cpu", fuse_conv="grouped"))
    for s, lin in members(tmp_path, specs, "solo"):
        run_lineage(s, lin, CPU)
    with monkeypatch.context() as m:
        _perturbed_model(m)
        for s, lin in members(tmp_path, specs, "ulp"):
            run_lineage(s, lin, CPU)
    store = {name: SweepStore(str(tmp_path), name) for name in ("g", "solo", "ulp")}
    fused = max(mismatch(masks(store["solo"].lineage(s.trial_id), 3), masks(store["g"].lineage(s.trial_id), 3))
                for s in specs)
    ulp = max(mismatch(masks(store["solo"].lineage(s.trial_id), 3), masks(store["ulp"].lineage(s.trial_id), 3))
              for s in specs)
    assert fused <= max(2 * ulp, 0.005), (fused, ulp)


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
