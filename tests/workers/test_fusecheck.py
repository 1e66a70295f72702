"""The fusion self-check (workers/fusecheck.py): what it passes, what it
catches, what a group does when it fails, and where its outcome is recorded."""
from __future__ import annotations

import logging

import pytest
import torch

from orchestrator.status import format_status, sweep_status
from bench.fuse_mutations import MUTATIONS, mutated
from workers.fusecheck import FUSABLE, RATIO, compare, self_check
from workers.fused import FusedTrainer
from workers.group import run_group
from workers.spec import DataSpec, ModelSpec, PruneSpec, RunOptions, TrainSpec, TrialSpec
from workers.store import SweepStore

from .test_fused import member
from .test_group import one_thread  # noqa: F401  (autouse: bits that do not depend on the core count)


@pytest.fixture(autouse=True)
def fresh_checks():
    """The process-wide cache of check outcomes holds what a mutated fusion
    did here: it must not reach other tests' groups of the same shape."""
    from workers import fusecheck
    fusecheck._CACHE.clear()
    yield
    fusecheck._CACHE.clear()


def spec(seed, arch="resnet18", rounds=1):
    return TrialSpec(DataSpec("digits", fraction=0.1, augmentation="basic"), model=ModelSpec(arch=arch, width=0.125),
                     train=TrainSpec(epochs=2, batch_size=40, lr=0.05),
                     prune=PruneSpec(rounds=rounds, rewind_epoch=1), seed=seed)


def test_the_rule_judges_errors_by_the_size_of_what_was_summed():
    ref = {"grad:a": torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64),
           "grad:b": torch.tensor([1e-17], dtype=torch.float64)}  # zero by cancellation
    solo = {"grad:a": ref["grad:a"] * (1 + 1e-7), "grad:b": torch.tensor([3e-8], dtype=torch.float64)}
    fused = {"grad:a": ref["grad:a"] * (1 + 2e-7), "grad:b": torch.tensor([-5e-8], dtype=torch.float64)}
    c = compare(fused, solo, ref, 2.0 ** -24)
    assert c["worst"]["margin"] <= 1.0  # b's own norm would make both errors ~1e9
    bug = {"grad:a": ref["grad:a"].flip(0), "grad:b": fused["grad:b"]}  # another member's values
    assert compare(bug, solo, ref, 2.0 ** -24)["worst"]["margin"] > 1e3
    drift = {"grad:a": ref["grad:a"] * (1 + 10 * RATIO * 1e-7), "grad:b": solo["grad:b"]}
    assert compare(drift, solo, ref, 2.0 ** -24)["worst"]["margin"] > 1.0  # 40x the solo rounding


def _members(arch, bf16):
    """Three members as a round starts after training: one dense, two at density
    0.6, each with momentum buffers of its own; in bf16 autocast if asked (CPU has it)."""
    ts = [member(seed=s, arch=arch, aug="basic", density=None if s == 0 else 0.6) for s in range(3)]
    for t in ts:
        t.train_epoch(0, 0)
        t.autocast = bf16
    return ts


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_the_whole_step_check_passes_a_correct_fusion_and_fails_every_mutation(arch, bf16):
    """The check is one whole step (workers/fusecheck.py): a fusion that skips
    one member's masks, swaps two members' momentum, keeps a stale learning
    rate or feeds a member another's data fails it, in fp32 and under bf16
    autocast, on a plain and on a depthwise network; the correct program
    passes on both kernels."""
    ts = _members(arch, bf16)
    for strategy in ("grouped", "loop"):
        o = self_check(ts, strategy)
        assert o["passed"], o
        assert o["solo_error"] > 0 and o["logic"]["worst"]["margin"] < 0.05
    for name in MUTATIONS:
        with mutated(name):
            o = self_check(ts, "grouped")
        assert not o["passed"], name
        # the float64 step tells a logic error from rounding by many orders of magnitude
        assert o["logic"]["worst"]["margin"] > 1e6, (name, o["logic"]["worst"])
        if not bf16:  # in fp32 the step in the training numerics sees it too
            assert o["worst"]["margin"] > 100, (name, o["worst"])


def test_the_allowance_grows_with_the_longest_sum_and_never_below_four():
    from workers.fusecheck import reduction_length
    t = member(arch="resnet18", batch=40)
    pixels = 40 * t.prep.x_train[0, 0].numel()
    fan_in = max(p[0].numel() for p in t.model.parameters() if p.dim() > 1)
    assert reduction_length(t) == max(pixels, fan_in)
    o = self_check([t, member(seed=1, arch="resnet18", batch=40)], "loop")
    assert o["ratio"] == round(max(RATIO, reduction_length(t) ** 0.5), 2)


@pytest.mark.parametrize("method,arch", FUSABLE)
def test_every_fusable_network_passes_its_check_on_both_kernels(method, arch):
    ts = [member(seed=s, method=method, arch=arch, density=None if s == 0 else 0.6) for s in range(2)]
    for strategy in ("grouped", "loop"):
        o = self_check(ts, strategy)
        assert o["passed"], (strategy, o["worst"], o["logic"]["worst"])


def test_a_group_whose_fusion_fails_its_check_falls_back_and_says_so(tmp_path, monkeypatch, caplog):
    """A fused program that computes the wrong thing on this device (here: two
    members' data swapped) never trains: grouped fails, loop fails, the
    members train alone, each failure is one line, every round records it."""
    real = FusedTrainer.forward
    monkeypatch.setattr(FusedTrainer, "forward", lambda self, xbs: real(self, [xbs[1], xbs[0], *xbs[2:]]))
    specs = [spec(s) for s in range(2)]
    st = SweepStore(str(tmp_path), "s")
    with caplog.at_level(logging.WARNING, "lth_sweep.fusecheck"):
        got = run_group([(s, st.lineage(s.trial_id)) for s in specs], RunOptions(device="cpu", fuse_conv="grouped"))
    lines = [r.getMessage() for r in caplog.records if "self-check failed" in r.getMessage()]
    assert len(lines) == 2 and "\n" not in "".join(lines)
    assert "resnet18 grouped K=2 on cpu float32" in lines[0] and "training with loop" in lines[0]
    assert "training with each member alone" in lines[1]
    for rows in got.values():
        for m in rows:
            assert m["numerics"]["conv"] == "solo" and m["numerics"]["fused"] == 1 and "fused_with" not in m
            assert not m["fuse_check"]["passed"] and m["fuse_check"]["fell_back_from"] == ["grouped", "loop"]
            assert m["numerics"]["fallback"] == "check failed"  # the round says why it trained alone


def test_a_fused_program_that_errs_or_runs_out_of_memory_records_why_its_members_trained_alone(tmp_path,
                                                                                               monkeypatch):
    """The fallback is in the record: each member's round names why it trained
    outside its fused program (an error of the program: its type; out of memory
    at K=2: "out of memory"), and a group that fused records no fallback."""
    import workers.group as G
    for exc, why in ((ValueError("bad kernel"), "error: ValueError"),
                     (RuntimeError("CUDA out of memory. Tried to allocate"), "out of memory")):
        def broken(self, k, epoch, active, exc=exc):
            raise exc
        monkeypatch.setattr(FusedTrainer, "train_epoch", broken)
        specs = [spec(s) for s in range(2)]
        st = SweepStore(str(tmp_path / why.replace(" ", "_").replace(":", "")), "s")
        got = G.run_group([(s, st.lineage(s.trial_id)) for s in specs], RunOptions(device="cpu", fuse_conv="loop"))
        for rows in got.values():
            assert rows and all(m["numerics"]["fallback"] == why and m["numerics"]["fused"] == 1 for m in rows)
    monkeypatch.undo()
    specs = [spec(s) for s in range(2)]
    st = SweepStore(str(tmp_path / "fused"), "s")
    got = G.run_group([(s, st.lineage(s.trial_id)) for s in specs], RunOptions(device="cpu", fuse_conv="loop"))
    assert all("fallback" not in m["numerics"] and m["numerics"]["fused"] == 2 for rows in got.values() for m in rows)


def test_a_grouped_fp32_mobilenetv2_sweep_records_its_check_and_status_shows_it(tmp_path, caplog):
    """On this CPU, MobileNetV2 (2-4-channel blocks: ill-conditioned in fp32)
    fused on the grouped kernels either passes its self-check with its errors
    recorded or falls back with one line; its committed rounds say which, the
    check is cached once for the sweep, and `status` lists it."""
    specs = [spec(s, arch="mobilenetv2") for s in range(2)]
    st = SweepStore(str(tmp_path), "s")
    with caplog.at_level(logging.WARNING, "lth_sweep.fusecheck"):
        got = run_group([(s, st.lineage(s.trial_id)) for s in specs], RunOptions(device="cpu", fuse_conv="grouped"))
    rounds = [m for rows in got.values() for m in rows]
    assert len(rounds) == 4
    for m in rounds:
        fc = m["fuse_check"]
        assert fc["fused_error"] >= 0 and fc["solo_error"] > 0 and fc["key"]["arch"] == "mobilenetv2"
        if fc["passed"]:
            assert m["numerics"]["conv"] == fc["strategy"] and m["numerics"]["fused"] == 2
        else:
            assert "self-check failed: mobilenetv2 grouped" in caplog.text
    checks = st.fuse_checks()
    assert len(checks) >= 1 and checks[0]["key"]["strategy"] == "grouped"
    status = sweep_status(st, planned={s.trial_id: s.num_rounds for s in specs})
    assert status["fusion"][0]["arch"] == "mobilenetv2" and status["fusion"][0]["K"] == 2
    assert "fusion self-check" in format_status(status) and "mobilenetv2 grouped K=2 on cpu" in format_status(status)
